"""Feature extractors for DeepLabV3+ with output-stride control, and local ImageNet weights.

Every backbone returns (low-level features at stride 4, high-level features at the output stride)
and names its parameters as the published ImageNet weights do (torchvision for resnet*/mobilenet,
the CPS/TorchSemiSeg release for *_v1c), so a state dict loads key for key. Networks are always
built with weights=None: weights come only from a local file, never from a download.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18, resnet50, resnet101
from torchvision.models.resnet import Bottleneck

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet50", "resnet101", "resnet50_v1c", "resnet101_v1c", "mobilenet_v3_large")
OUTPUT_STRIDES = (8, 16)
# Per-block dilation factors of the last ResNet stage (docs/methods/stpg.md §1), times the stage's base dilation.
MULTI_GRID = (1, 2, 4)
# Keys of checkpoint wrappers and of parameter-name prefixes added by DataParallel / a full model.
_CHECKPOINT_WRAPPERS = ("state_dict", "model")
_KEY_PREFIXES = ("module.", "backbone.")
_EXAMPLE_KEYS = 5


class ModelConfigError(ValueError):
    """A model setting the user must fix; the message names the setting and the fix."""


class ResNetBackbone(nn.Module):
    """A ResNet trunk without its ImageNet classifier, attribute names as in torchvision."""

    imagenet_classifier_prefix = "fc."

    def __init__(self, name: str, conv1: nn.Module, bn1: nn.BatchNorm2d, layers: Sequence[nn.Sequential]):
        super().__init__()
        self.name = name
        self.conv1 = conv1
        self.bn1 = bn1
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.low_channels = _out_channels(self.layer1)
        self.high_channels = _out_channels(self.layer4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high


class MobileNetV3Backbone(nn.Module):
    """torchvision MobileNetV3-Large features: the light backbone for in-vehicle budgets."""

    imagenet_classifier_prefix = "classifier."
    # Index of the last block at stride 4, and the blocks of the stages that end at stride 16 and 32
    # (torchvision's `features` layout of mobilenet_v3_large).
    LOW_LEVEL_END = 3
    STAGE_TO_16 = range(7, 13)
    STAGE_TO_32 = range(13, 16)

    def __init__(self, output_stride: int):
        super().__init__()
        self.name = "mobilenet_v3_large"
        self.features = mobilenet_v3_large(weights=None).features
        stage_dilations = {self.STAGE_TO_32: 2} if output_stride == 16 else {self.STAGE_TO_16: 2, self.STAGE_TO_32: 4}
        for stage, dilation in stage_dilations.items():
            for index in stage:
                _dilate_depthwise(self.features[index], dilation)
        self.low_channels = self.features[self.LOW_LEVEL_END].out_channels
        self.high_channels = self.features[-1].out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = x
        for index, block in enumerate(self.features):
            x = block(x)
            if index == self.LOW_LEVEL_END:
                low = x
        return low, x


def build_backbone(name: str, output_stride: int = 16) -> ResNetBackbone | MobileNetV3Backbone:
    """A randomly initialised backbone; layer4 at stride 16 or layers 3-4 at stride 8 use dilation."""
    if name not in BACKBONES:
        raise ModelConfigError(f"unknown backbone {name!r}; set model.backbone to one of {', '.join(BACKBONES)}")
    if output_stride not in OUTPUT_STRIDES:
        raise ModelConfigError(f"output stride {output_stride!r} is not supported; set model.output_stride to 8 or 16")
    if name == "mobilenet_v3_large":
        return MobileNetV3Backbone(output_stride)
    if name.endswith("_v1c"):
        backbone = _resnet_v1c(name, (3, 4, 6, 3) if name == "resnet50_v1c" else (3, 4, 23, 3))
    else:
        net = {"resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101}[name](weights=None)
        backbone = ResNetBackbone(name, net.conv1, net.bn1, [net.layer1, net.layer2, net.layer3, net.layer4])
    _set_resnet_output_stride(backbone, output_stride)
    return backbone


def _resnet_v1c(name: str, blocks: Sequence[int]) -> ResNetBackbone:
    """ResNet "v1c": a three-conv deep stem ending in 128 channels, then torchvision Bottlenecks.

    The stem's last BN/ReLU sit outside `conv1` (as `bn1`, `relu`) so the keys match the released
    `resnet50_v1c.pth`: conv1.0/.1/.3/.4/.6, bn1, layerN.M.{conv,bn}K, layerN.0.downsample.0/1.
    """
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.Conv2d(64, 128, 3, padding=1, bias=False),
    )
    layers, in_channels = [], 128
    for stage, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        stride = 1 if stage == 0 else 2
        out_channels = planes * Bottleneck.expansion
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))
        layer = [Bottleneck(in_channels, planes, stride=stride, downsample=downsample)]
        layer += [Bottleneck(out_channels, planes) for _ in range(count - 1)]
        layers.append(nn.Sequential(*layer))
        in_channels = out_channels
    backbone = ResNetBackbone(name, stem, nn.BatchNorm2d(128), layers)
    # The same random init torchvision gives its ResNets, for runs without ImageNet weights.
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return backbone


def _set_resnet_output_stride(backbone: ResNetBackbone, output_stride: int) -> None:
    """Dilate layer4 (OS16) or layers 3 and 4 (OS8) instead of striding.

    Bottleneck nets use the multi-grid (1, 2, 4) on layer4, scaled by 2 at OS16 and 4 at OS8
    (docs/methods/stpg.md §1). ResNet-18's layer4 has two BasicBlocks, too few for the grid: every 3x3 conv of a dilated
    layer gets that layer's dilation. torchvision's replace_stride_with_dilation cannot express the
    multi-grid nor dilate BasicBlocks, so one rule covers all ResNets.
    """
    layer4_base = 2 if output_stride == 16 else 4
    layer4_blocks = len(backbone.layer4)
    if isinstance(backbone.layer4[0], Bottleneck) and layer4_blocks == len(MULTI_GRID):
        layer4 = tuple(layer4_base * grid for grid in MULTI_GRID)
    else:
        layer4 = (layer4_base,) * layer4_blocks
    _dilate_resnet_layer(backbone.layer4, layer4)
    if output_stride == 8:
        _dilate_resnet_layer(backbone.layer3, (2,) * len(backbone.layer3))


def _dilate_resnet_layer(layer: nn.Sequential, dilations: Sequence[int]) -> None:
    """Trade the layer's stride 2 for dilation: block i's 3x3 convs get dilation and padding dilations[i]."""
    for block, dilation in zip(layer, dilations, strict=True):
        block.stride = 1
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation = (dilation, dilation)
                    module.padding = (dilation, dilation)


def _dilate_depthwise(block: nn.Module, dilation: int) -> None:
    """Replace the stride of an inverted-residual block's depthwise conv by a dilation."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            module.stride = (1, 1)
            module.dilation = (dilation, dilation)
            module.padding = tuple((k - 1) // 2 * dilation for k in module.kernel_size)


def _out_channels(layer: nn.Sequential) -> int:
    last_norm = [m for m in layer[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1]
    return last_norm.num_features


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a non-strict load of ImageNet weights did; the ImageNet classifier is never listed."""

    path: str
    loaded: int
    missing: tuple[str, ...]  # backbone parameters/buffers the file lacks: left at random init
    unexpected: tuple[str, ...]  # file entries the backbone has no place for
    mismatched: tuple[str, ...]  # same name, different shape: skipped


def load_backbone_weights(backbone: ResNetBackbone | MobileNetV3Backbone, path: str | Path) -> LoadReport:
    """Load a local state dict (plain, wrapped under 'state_dict'/'model', with 'module.'/'backbone.'
    prefixes) into `backbone`, non-strictly; warn about and report what did not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path}; set model.pretrained to a local file or null "
            "(weights are never downloaded)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same thing to the user
        raise ModelConfigError(
            f"pretrained weights unreadable: {path} ({type(exc).__name__}); "
            "point model.pretrained at a PyTorch state dict file") from None
    state = _state_dict_of(checkpoint, path)
    state = {k: v for k, v in state.items() if not k.startswith(backbone.imagenet_classifier_prefix)}

    own = backbone.state_dict()
    mismatched = tuple(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    fitting = {k: v for k, v in state.items() if k not in mismatched}
    result = backbone.load_state_dict(fitting, strict=False)
    missing = tuple(k for k in result.missing_keys if k not in mismatched)
    unexpected = tuple(result.unexpected_keys)
    loaded = len(fitting) - len(unexpected)
    if loaded == 0:
        raise ModelConfigError(
            f"pretrained weights {path} match no parameter of backbone {backbone.name}; "
            "set model.pretrained to weights for this backbone or to null")
    report = LoadReport(str(path), loaded, missing, unexpected, mismatched)
    for kind in ("missing", "unexpected", "mismatched"):
        keys = getattr(report, kind)
        if keys:
            log.warning("pretrained %s -> %s: %d %s keys (e.g. %s)", path, backbone.name, len(keys), kind,
                        ", ".join(keys[:_EXAMPLE_KEYS]))
    log.info("pretrained %s -> %s: loaded %d tensors", path, backbone.name, loaded)
    return report


def _state_dict_of(checkpoint, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, unwrapped and with training-wrapper prefixes removed."""
    while isinstance(checkpoint, Mapping):
        wrapper = next((k for k in _CHECKPOINT_WRAPPERS if isinstance(checkpoint.get(k), Mapping)), None)
        if wrapper is None:
            break
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, Mapping) or not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelConfigError(
            f"pretrained weights {path} hold no state dict; point model.pretrained at a file saved "
            "with torch.save(model.state_dict())")
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith(_KEY_PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    return state
