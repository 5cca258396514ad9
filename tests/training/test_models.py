"""DeepLabV3+ and its backbones: shapes, dilations, the head layout of docs/methods/stpg.md §1, init, param groups, weights."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training.models import (BACKBONES, DeepLabV3Plus, ModelConfigError, build_backbone, build_model,
                             load_backbone_weights)
from training.models.deeplab import ImagePoolBatchNorm

K = 5


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _dilations(module: nn.Module) -> list[tuple[int, int]]:
    return [m.dilation for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def _strides(module: nn.Module) -> set[tuple[int, int]]:
    return {m.stride for m in module.modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shapes(backbone, output_stride):
    # On the meta device the real modules run shape inference only, so the big ResNets cost no compute.
    with torch.device("meta"):
        model = build_model(backbone, K, output_stride=output_stride, proj_dim=32).eval()
        x = torch.empty(2, 3, 64, 64)
        low, high = model.backbone(x)
        logits, proj = model(x, return_features=True)
        lowres = model.forward_lowres(x)
    assert low.shape == (2, model.backbone.low_channels, 16, 16)
    assert high.shape == (2, model.backbone.high_channels, 64 // output_stride, 64 // output_stride)
    assert logits.shape == (2, K, 64, 64)
    assert proj.shape == (2, 32, 16, 16)
    assert lowres.shape == (2, K, 16, 16)


def test_v1c_forward_in_train_mode():
    model = build_model("resnet50_v1c", K).train()
    with torch.no_grad():
        logits, proj = model(torch.randn(2, 3, 64, 64), return_features=True)
    assert logits.shape == (2, K, 64, 64) and proj.shape == (2, 256, 16, 16)
    assert torch.isfinite(logits).all() and torch.isfinite(proj).all()


@pytest.mark.parametrize("backbone, low, high", [
    ("resnet18", 64, 512), ("resnet50", 256, 2048), ("mobilenet_v3_large", 24, 960)])
def test_reported_channels(backbone, low, high):
    with torch.device("meta"):
        net = build_backbone(backbone)
    assert (net.low_channels, net.high_channels) == (low, high)


def test_v1c_stem_and_bottleneck_layout():
    with torch.device("meta"):
        net = build_backbone("resnet50_v1c")
    assert [type(m) for m in net.conv1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2 + [nn.Conv2d]
    convs = [net.conv1[i] for i in (0, 3, 6)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert all(c.bias is None for c in convs)
    assert net.bn1.num_features == 128
    assert (net.maxpool.kernel_size, net.maxpool.stride) == (3, 2)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert net.layer1[0].conv1.in_channels == 128
    first = net.layer2[0]
    assert (first.conv1.stride, first.conv2.stride) == ((1, 1), (2, 2))  # stride on the 3x3
    assert (first.downsample[0].kernel_size, first.downsample[0].stride) == ((1, 1), (2, 2))
    assert isinstance(first.downsample[1], nn.BatchNorm2d)
    keys = net.state_dict().keys()
    for key in ("conv1.0.weight", "conv1.1.running_var", "conv1.4.weight", "conv1.6.weight", "bn1.weight",
                "layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias"):
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)


def test_resnet101_v1c_blocks():
    with torch.device("meta"):
        net = build_backbone("resnet101_v1c")
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert net.bn1.num_features == 128


@pytest.mark.parametrize("backbone", ["resnet50_v1c", "resnet50"])
def test_bottleneck_multi_grid(backbone):
    with torch.device("meta"):
        os16, os8 = build_backbone(backbone, 16), build_backbone(backbone, 8)
    assert [block.conv2.dilation for block in os16.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert [block.conv2.padding for block in os16.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert _strides(os16.layer4) == {(1, 1)}
    assert set(_dilations(os16.layer3)) == {(1, 1)}
    assert os16.layer3[0].conv2.stride == (2, 2)

    assert set(_dilations(os8.layer3)) == {(2, 2)}
    assert _strides(os8.layer3) == {(1, 1)}
    assert [block.conv2.dilation for block in os8.layer4] == [(4, 4), (8, 8), (16, 16)]


def test_resnet18_dilation():
    os16 = build_backbone("resnet18", 16)
    assert set(_dilations(os16.layer4)) == {(2, 2)}
    assert _strides(os16.layer4) == {(1, 1)}
    assert set(_dilations(os16.layer3)) == {(1, 1)}
    os8 = build_backbone("resnet18", 8)
    assert set(_dilations(os8.layer3)) == {(2, 2)}
    assert set(_dilations(os8.layer4)) == {(4, 4)}
    assert _strides(os8.layer3) | _strides(os8.layer4) == {(1, 1)}


def test_mobilenet_dilation():
    def depthwise(net, index):
        return [m for m in net.features[index].modules() if isinstance(m, nn.Conv2d) and m.groups > 1][0]

    os16 = build_backbone("mobilenet_v3_large", 16)
    assert [depthwise(os16, i).dilation for i in (12, 13, 15)] == [(1, 1), (2, 2), (2, 2)]
    assert depthwise(os16, 13).stride == (1, 1)
    assert depthwise(os16, 13).padding == (4, 4)  # 5x5 kernel
    os8 = build_backbone("mobilenet_v3_large", 8)
    assert [depthwise(os8, i).dilation for i in (6, 7, 12, 13)] == [(1, 1), (2, 2), (2, 2), (4, 4)]
    assert depthwise(os8, 7).stride == (1, 1)


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_layout(output_stride, rates):
    aspp = DeepLabV3Plus("resnet18", K, output_stride=output_stride).head.aspp
    assert aspp.map_convs[0].kernel_size == (1, 1)
    assert tuple(c.dilation[0] for c in aspp.map_convs[1:]) == rates
    assert tuple(c.padding[0] for c in aspp.map_convs[1:]) == rates
    assert all(c.bias is None and c.out_channels == 256 for c in aspp.map_convs)
    assert aspp.map_bn.num_features == 1024
    assert (aspp.red_conv.in_channels, aspp.red_conv.out_channels) == (1024, 256)
    assert aspp.leaky_relu.negative_slope == 0.01


def test_image_pool_branch_is_added_before_the_last_bn():
    aspp = DeepLabV3Plus("resnet18", K).head.aspp.eval()
    seen = []
    aspp.red_bn.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.randn(2, 512, 4, 5)
    with torch.no_grad():
        with_pool = aspp(x)
        nn.init.zeros_(aspp.pool_red_conv.weight)
        without_pool = aspp(x)
    assert with_pool.shape == (2, 256, 4, 5)
    assert not torch.allclose(with_pool, without_pool)
    difference = seen[0] - seen[1]
    # A broadcast add: the pool branch shifts each channel by one constant over the whole map.
    assert difference.abs().amax() > 1e-3
    assert torch.allclose(difference, difference[:, :, :1, :1].expand_as(difference), atol=1e-5)


def test_image_pool_bn_batch_of_one_uses_running_stats():
    bn = ImagePoolBatchNorm(1).train()
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    out = bn(torch.full((1, 1, 1, 1), 5.0))
    assert out.item() == pytest.approx(3.0 * (5.0 - 1.0) / 2.0 + 0.5)  # 6.5
    assert (bn.running_mean.item(), bn.running_var.item()) == (1.0, 4.0)


def test_image_pool_bn_larger_batch_is_plain_batchnorm():
    bn = ImagePoolBatchNorm(1).train()
    out = bn(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))
    # batch mean 2, biased var 1 -> (-1, 1); running: 0.1 * 2 and 0.9 * 1 + 0.1 * 2 (unbiased var 2)
    assert out.flatten().tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)
    assert bn.running_mean.item() == pytest.approx(0.2)
    assert bn.running_var.item() == pytest.approx(1.1)


def test_batch_of_one_in_train_and_eval():
    model = build_model("resnet18", K)
    x = torch.randn(1, 3, 64, 64)
    model.train()
    logits, proj = model(x, return_features=True)
    assert logits.shape == (1, K, 64, 64) and proj.shape == (1, 256, 16, 16)
    logits.mean().backward()
    assert model.head.aspp.global_pooling_conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (1, K, 64, 64)


def test_full_resolution_logits_are_the_upsampled_lowres_logits():
    model = build_model("resnet18", K).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = F.interpolate(model.forward_lowres(x), size=(64, 64), mode="bilinear", align_corners=True)
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_odd_input_size():
    model = build_model("resnet18", K).eval()
    x = torch.randn(1, 3, 65, 67)
    with torch.no_grad():
        logits, proj = model(x, return_features=True)
        lowres = model.forward_lowres(x)
    assert logits.shape == (1, K, 65, 67)
    # stem: 65 -> 33 -> 17 and 67 -> 34 -> 17
    assert proj.shape[-2:] == lowres.shape[-2:] == (17, 17)


def test_channels_last_matches_contiguous():
    model = build_model("resnet18", K).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(actual, expected, atol=1e-4)


def test_param_groups_split():
    model = build_model("resnet18", K)
    decay, no_decay = model.param_groups(1e-4)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-4, 0.0)
    assert all(p.ndim == 4 for p in decay["params"])  # conv weights only
    assert all(p.ndim == 1 for p in no_decay["params"])  # BN weights/biases and conv biases
    assert any(p is model.head.classifier.bias for p in no_decay["params"])
    grouped = {id(p) for p in decay["params"]} | {id(p) for p in no_decay["params"]}
    assert len(grouped) == len(decay["params"]) + len(no_decay["params"])
    trained = [*model.backbone.parameters(), *model.head.parameters()]
    assert grouped == {id(p) for p in trained}
    assert not grouped & {id(p) for p in model.projector.parameters()}
    bn_params = sum(2 for m in [*model.backbone.modules(), *model.head.modules()] if isinstance(m, nn.BatchNorm2d))
    assert len(no_decay["params"]) == bn_params + 1  # + the classifier bias
    torch.optim.SGD(model.param_groups(1e-4), lr=0.01, momentum=0.9)


def test_param_groups_with_the_projector_take_the_same_rule():
    # a trained projector (CSS, STPG with train_projection): conv weights decay, its BN and biases do not
    model = build_model("resnet18", K)
    decay, no_decay = model.param_groups(1e-4, projector=True)
    without = model.param_groups(1e-4)
    convs = [m for m in model.projector.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.projector.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {id(p) for p in decay["params"]} - {id(p) for p in without[0]["params"]} == {id(c.weight) for c in convs}
    assert ({id(p) for p in no_decay["params"]} - {id(p) for p in without[1]["params"]}
            == {id(p) for m in bns for p in (m.weight, m.bias)} | {id(c.bias) for c in convs if c.bias is not None})


def test_reset_head_parameters():
    model = build_model("resnet18", K)
    bns = [m for m in model.head.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.fill_(5.0)
            bn.bias.fill_(2.0)
            bn.eps, bn.momentum = 1e-3, 0.5
    classifier_bias = model.head.classifier.bias.clone()
    projector = {k: v.clone() for k, v in model.projector.state_dict().items()}
    model.reset_head_parameters(torch.Generator().manual_seed(7))

    assert len(bns) == 6  # map_bn, pool bn, red_bn, reduce, two in last_conv
    for bn in bns:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    conv = model.head.last_conv[0]  # fan_in 304 * 3 * 3 = 2736 -> std sqrt(2 / 2736) = 0.027037
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 2736), rel=0.02)
    assert conv.weight.mean().abs().item() < 1e-3
    assert torch.equal(model.head.classifier.bias, classifier_bias)
    assert all(torch.equal(v, projector[k]) for k, v in model.projector.state_dict().items())

    first = model.head.aspp.red_conv.weight.clone()
    model.reset_head_parameters(torch.Generator().manual_seed(7))
    assert torch.equal(model.head.aspp.red_conv.weight, first)
    model.reset_head_parameters(torch.Generator().manual_seed(8))
    assert not torch.equal(model.head.aspp.red_conv.weight, first)


def test_config_rebuilds_the_model():
    model = build_model("mobilenet_v3_large", K, output_stride=8, proj_dim=64)
    assert model.config == {"backbone": "mobilenet_v3_large", "num_classes": K, "output_stride": 8, "proj_dim": 64}
    assert model.num_classes == K
    twin = build_model(**model.config)
    twin.load_state_dict(model.state_dict())  # strict: same architecture
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), model.eval()(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": "resnet34"}, "unknown backbone 'resnet34'; set model.backbone to one of resnet18"),
    ({"output_stride": 32}, "set model.output_stride to 8 or 16"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
])
def test_bad_settings(kwargs, message):
    settings = {"backbone": "resnet18", "num_classes": K, **kwargs}
    with pytest.raises(ModelConfigError, match=message):
        build_model(**settings)


def test_torchvision_weights_round_trip(tmp_path, caplog):
    source = torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    with caplog.at_level(logging.WARNING):
        model = build_model("resnet18", K, pretrained=str(path))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key
    report = model.load_report
    assert (report.missing, report.unexpected, report.mismatched) == ((), (), ())
    assert report.loaded == len(model.backbone.state_dict())
    assert not caplog.records  # the ImageNet fc is expected to be left out


def test_v1c_weights_with_module_prefix(tmp_path, caplog):
    source = build_backbone("resnet50_v1c").state_dict()
    wrapped = {f"module.{k}": v for k, v in source.items()}
    wrapped["module.fc.weight"] = torch.zeros(1000, 2048)
    wrapped["module.aux.weight"] = torch.zeros(3)
    path = tmp_path / "resnet50_v1c.pth"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    with caplog.at_level(logging.WARNING):
        model = build_model("resnet50_v1c", K, pretrained=path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert model.load_report.unexpected == ("aux.weight",)
    assert model.load_report.missing == ()
    assert "aux.weight" in caplog.text and "fc.weight" not in caplog.text


def test_partial_weights_are_reported(tmp_path, caplog):
    model = build_model("resnet18", K)
    source = torchvision.models.resnet18(weights=None).state_dict()
    del source["layer4.1.bn2.bias"]
    source["layer1.0.conv1.weight"] = torch.zeros(1)
    source["backbone.extra"] = torch.zeros(2)  # prefix stripped -> "extra"
    path = tmp_path / "partial.pth"
    torch.save({"model": source}, path)
    before = model.backbone.layer1[0].conv1.weight.clone()
    with caplog.at_level(logging.WARNING):
        report = load_backbone_weights(model.backbone, path)
    assert report.missing == ("layer4.1.bn2.bias",)
    assert report.unexpected == ("extra",)
    assert report.mismatched == ("layer1.0.conv1.weight",)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, before)
    assert torch.equal(model.backbone.layer4[0].conv1.weight, source["layer4.0.conv1.weight"])
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 3


def test_missing_weights_file(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_model("resnet18", K, pretrained=path)
    assert str(info.value) == (f"pretrained weights not found: {path}; set model.pretrained to a local file "
                               "or null (weights are never downloaded)")


def test_unusable_weights_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelConfigError, match="pretrained weights unreadable"):
        build_model("resnet18", K, pretrained=garbage)
    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 1}, no_tensors)
    with pytest.raises(ModelConfigError, match="hold no state dict"):
        build_model("resnet18", K, pretrained=no_tensors)
    other = tmp_path / "mobilenet.pth"
    torch.save(build_backbone("mobilenet_v3_large").state_dict(), other)
    with pytest.raises(ModelConfigError, match="match no parameter of backbone resnet18"):
        build_model("resnet18", K, pretrained=other)
