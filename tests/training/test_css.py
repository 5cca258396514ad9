"""CSS: the worked cases S1-S3 of docs/methods/css.md, the strong view, gradient routing and exact resume."""
import math
import random
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from tests.training.test_engine import NORM, tiny, trainer  # noqa: F401  (tiny is a fixture)
from training import params
from training.methods import MethodContext, method_class
from training.methods import contrast
from training.methods.contrast import PrototypeBank, _info_nce, negative_class_probabilities, prototype_infonce_loss
from training.methods.css import (StrongView, confident_fraction, half_area_box, pseudo_targets, quantized,
                                  representation_labels, representation_probability_range, zero_loss_warnings)
from training.methods.ema import warm_start_decay
from training.methods.losses import IGNORE_INDEX, weighted_ce
from training.models import build_model
from training.schedules import poly_lr

IGN = IGNORE_INDEX
# Small draws keep the contrast cheap on the CPU; the rule is the same for 256 x 512.
SMALL = dict(num_queries=16, num_negatives=32)


def _feature_map(vectors):
    """(N, D) vectors as a (1, D, 1, N) feature map, raster order preserved."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, -1, 1, len(vectors))


def _row(values, dtype=torch.long):
    return torch.tensor(values, dtype=dtype).reshape(1, 1, -1)


def css_params(**values):
    """params.yaml's train.css with `values` laid over it."""
    return params.section("train", css=values).css


def build(num_classes=3, **css):
    cfg = params.section("train", method="css", crop=[32, 32], css={**SMALL, **css})
    context = MethodContext(num_classes=num_classes, dataset="cityscapes", batch_size=2, num_labeled=4,
                            iters_per_epoch=10, **NORM)
    torch.manual_seed(0)
    return method_class("css")(cfg, context, lambda: build_model("resnet18", num_classes, proj_dim=8))


# ---- S1: the pseudo-label rule of the three scripts ----

PROTOTYPES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
TEACHER_FEATURES = [[2.0, 0.1], [0.1, 3.0], [-1.0, -0.2]]
TEACHER_PROBS = torch.tensor([[0.98, 0.01, 0.01], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])


def _s1_labels():
    conf_rep, label_rep = representation_labels(_feature_map(TEACHER_FEATURES), PROTOTYPES, 0.5, (1, 3))
    conf_cls, label_cls = TEACHER_PROBS.T.reshape(1, 3, 1, 3).max(dim=1)
    return label_cls, label_rep, conf_cls, conf_rep


def test_s1_representation_labels_and_confidence():
    label_cls, label_rep, _, conf_rep = _s1_labels()
    assert label_rep.flatten().tolist() == [0, 1, 2]
    assert label_cls.flatten().tolist() == [0, 0, 2]
    assert conf_rep.flatten().tolist() == pytest.approx([0.8559, 0.7864, 0.8970], abs=1e-4)


@pytest.mark.parametrize("mode, warm, target, confidence_from, contrast", [
    ("mix", False, [0, IGN, 2], "cls", [0, IGN, 2]),
    ("cross", False, [0, 1, 2], "rep", [0, 0, 2]),
    ("cross", True, [0, 0, 2], "cls", [0, 0, 2]),
    ("ori", False, [0, 0, 2], "cls", [0, 0, 2]),
])
def test_s1_targets_of_each_script(mode, warm, target, confidence_from, contrast):
    label_cls, label_rep, conf_cls, conf_rep = _s1_labels()
    got_target, got_confidence, got_contrast = pseudo_targets(mode, warm, label_cls, label_rep, conf_cls, conf_rep)
    assert got_target.flatten().tolist() == target
    assert got_contrast.flatten().tolist() == contrast
    assert torch.equal(got_confidence, conf_cls if confidence_from == "cls" else conf_rep)


# ---- S2: the image weight and the cap of the representation confidence ----

def test_s2_image_weighted_loss_counts_ignored_confident_pixels():
    target = _row([0, 1, IGN, 1])
    confidence = _row([0.99, 0.98, 0.0, 0.5], torch.float32)
    weight = confident_fraction(target, confidence, 0.97)
    assert weight.flatten().tolist() == pytest.approx([2 / 3])
    loss = weighted_ce(torch.zeros(1, 2, 1, 4), target, weight, reduction="positive_only")
    assert loss.item() == pytest.approx(2 / 3 * math.log(2), abs=1e-5)  # 0.46210


def test_s2_weight_can_exceed_one_where_pixels_are_ignored():
    # mix mode: the disagreeing pixels are ignored but still counted when confident
    weight = confident_fraction(_row([0, IGN, IGN, 1]), _row([0.99, 0.99, 0.99, 0.1], torch.float32), 0.97)
    assert weight.flatten().tolist() == pytest.approx([1.5])


@pytest.mark.parametrize("num_classes, cap", [(2, 0.9820), (3, 0.9647), (21, 0.7319)])
def test_s2_cap_of_the_representation_confidence(num_classes, cap):
    assert representation_probability_range(num_classes, 0.5)[1] == pytest.approx(cap, abs=1e-4)


def test_s2_cross_mode_loss_is_identically_zero_for_three_classes():
    torch.manual_seed(0)
    conf_rep, label_rep = representation_labels(torch.randn(2, 8, 4, 4) * 10, torch.randn(3, 8), 0.5, (4, 4))
    conf_rep = quantized(conf_rep)
    weight = confident_fraction(label_rep, conf_rep, 0.97)
    assert weight.flatten().tolist() == [0.0, 0.0]
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = weighted_ce(logits, label_rep, weight, reduction="positive_only")
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_s2_zero_loss_warning_names_the_cap():
    cross = css_params(label="cross", rep_temperature=0.5, unsup_threshold=0.97)
    (message,) = zero_loss_warnings(cross, 19)
    assert "0.7490 < unsup_threshold 0.97" in message and "identically 0" in message
    assert zero_loss_warnings(css_params(label="mix", unsup_threshold=0.97), 19) == []
    assert zero_loss_warnings(cross, 2) == []  # 250/255 = 0.9804 reaches 0.97
    assert zero_loss_warnings(css_params(label="cross", rep_temperature=0.2, unsup_threshold=0.97), 19) == []
    (message,) = zero_loss_warnings(css_params(label="ori", strong_threshold=0.0), 19)
    assert "contrastive loss is identically 0" in message


def test_s2_warning_is_raised_once_at_start():
    with pytest.warns(UserWarning, match="identically 0") as caught:
        build(num_classes=19, label="cross")
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(num_classes=19, label="mix")


def test_confidences_are_truncated_to_eight_bits():
    values = quantized(torch.tensor([0.97, 248 / 255 + 1e-4, 0.7, 1.0]))
    assert values.tolist() == pytest.approx([247 / 255, 248 / 255, 178 / 255, 1.0])
    assert quantized(torch.tensor([0.97]), enabled=False).tolist() == pytest.approx([0.97])


# ---- S3: prototypes, EMA decay, the negative-class law and InfoNCE ----

def test_s3_prototype_first_fill_then_momentum():
    bank = PrototypeBank(num_classes=2, dim=2, momentum=0.99)
    bank.update(_feature_map([[1.0, 0.0], [3.0, 0.0]]), _row([0, 0]))
    assert bank.vectors.tolist() == [[2.0, 0.0], [0.0, 0.0]]  # class 1 unseen: stays zero
    bank.update(_feature_map([[0.0, 2.0], [9.0, 9.0]]), _row([0, IGN]))
    assert bank.vectors[0].tolist() == pytest.approx([1.98, 0.02])


def test_s3_prototype_whose_components_sum_to_zero_is_refilled():
    # the code tests sum(P_c) == 0: (1, -1) counts as unset and takes the batch mean (0, 2) whole
    bank = PrototypeBank(num_classes=1, dim=2, momentum=0.99)
    bank.update(_feature_map([[1.0, -1.0]]), _row([0]))
    bank.update(_feature_map([[0.0, 2.0]]), _row([0]))
    assert bank.vectors.tolist() == [[0.0, 2.0]]


@pytest.mark.parametrize("step, decay", [(0, 0.0), (1, 0.5), (2, 2 / 3), (99, 0.99), (500, 0.99)])
def test_s3_warm_start_decay(step, decay):
    assert warm_start_decay(step, 0.99) == pytest.approx(decay)


def test_s3_teacher_copies_then_averages_the_student():
    m = build()
    bias_t, bias_s = m.teacher.head.classifier.bias, m.student.head.classifier.bias
    with torch.no_grad():
        bias_t.fill_(0.0)
        bias_s.fill_(1.0)
    m.update_teachers(0)  # decay 0: a copy
    assert bias_t.tolist() == [1.0, 1.0, 1.0]
    with torch.no_grad():
        bias_s.fill_(3.0)
    m.update_teachers(1)  # decay 0.5
    assert bias_t.tolist() == [2.0, 2.0, 2.0]
    assert m.evaluated_network() is m.teacher and m.teachers() == [m.teacher]


def test_s3_negative_class_law():
    prototypes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    present = torch.tensor([True, True, True, False])
    probabilities = negative_class_probabilities(prototypes, present, 0.5)
    assert probabilities[0].tolist() == pytest.approx([0.0, 0.9681, 0.0319, 0.0], abs=1e-4)
    assert probabilities[:3].sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    alone = negative_class_probabilities(prototypes, torch.tensor([True, False, False, False]), 0.5)
    assert alone[0].tolist() == [0.0, 0.0, 0.0, 0.0]  # class 0 has no candidate: no negative class, no NaN
    assert not alone.isnan().any()


def _two_classes():
    """One pixel of class 0 at (1, 0) and one of class 1 at (0, 1), their prototypes the same."""
    features = _feature_map([[1.0, 0.0], [0.0, 1.0]]).requires_grad_()
    return features, _row([0, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_s3_infonce_of_orthogonal_negatives():
    # every anchor: positive cosine 1, 512 negatives at cosine 0 -> log(1 + 512 e^-2)
    features, labels, prototypes = _two_classes()
    loss = prototype_infonce_loss(features, labels, torch.ones(1, 1, 2, dtype=torch.bool), prototypes)
    assert loss.item() == pytest.approx(math.log(1 + 512 * math.exp(-2)), abs=1e-4)  # 4.2527


def test_s3_class_without_hard_anchor_still_counts_in_the_denominator():
    features, labels, prototypes = _two_classes()
    loss = prototype_infonce_loss(features, labels, _row([True, False], torch.bool), prototypes)
    assert loss.item() == pytest.approx(math.log(1 + 512 * math.exp(-2)) / 2, abs=1e-4)
    loss.backward()
    assert features.grad[..., 1].abs().sum() == 0  # no anchor there; keys carry no gradient
    assert features.grad[..., 0].abs().sum() > 0


def test_infonce_picks_the_same_cosines_as_gathering_the_keys():
    """The (C, Q, P) product then a pick equals dotting each anchor with its gathered (N, D) keys,
    repeated and shared keys included, in value and in the anchors' gradient."""
    generator = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    anchors, keys, positives = unit(2, 6, 8).requires_grad_(), unit(5, 8), unit(2, 8)
    negative_index = torch.randint(0, 5, (2, 6, 7), generator=generator)
    loss = _info_nce(anchors, positives, keys, negative_index, 0.5).sum()
    (grad,) = torch.autograd.grad(loss, anchors)
    reference = 0
    for c in range(2):
        logits = torch.cat([(anchors[c] @ positives[c])[:, None],
                            torch.einsum("qd,qnd->qn", anchors[c], keys[negative_index[c]])], dim=1) / 0.5
        reference = reference + (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    (reference_grad,) = torch.autograd.grad(reference, anchors)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_infonce_blocks_of_classes_change_nothing(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 3, 4, generator=generator)
    labels = torch.randint(0, 4, (2, 3, 4), generator=generator)
    hard = torch.rand(2, 3, 4, generator=generator) < 0.5
    prototypes = torch.randn(4, 8, generator=generator)

    def loss_and_grad():
        torch.manual_seed(2)  # the same draws in both runs
        leaf = features.clone().requires_grad_()
        loss = prototype_infonce_loss(leaf, labels, hard, prototypes, **SMALL)
        return loss, torch.autograd.grad(loss, leaf)[0]

    whole = loss_and_grad()  # every class in one product
    monkeypatch.setattr(contrast, "COSINE_BLOCK", SMALL["num_queries"] * 24)  # one class at a time
    torch.testing.assert_close(loss_and_grad(), whole, rtol=1e-6, atol=1e-7)


def test_s3_one_class_present_gives_zero():
    features, _, prototypes = _two_classes()
    loss = prototype_infonce_loss(features, _row([0, IGN]), torch.ones(1, 1, 2, dtype=torch.bool), prototypes)
    assert loss.item() == 0.0


# ---- the strong view ----

def test_half_area_box_sizes():
    random.seed(0)
    sizes = {(h, w) for h, w in (half_area_box(10, 10)[2:] for _ in range(200))}
    # w in {6..9} and h = round(50 / w)
    assert sizes == {(8, 6), (7, 7), (6, 8), (6, 9)}
    for _ in range(200):
        top, left, h, w = half_area_box(7, 33)
        assert 0 <= top <= 7 - h and 0 <= left <= 33 - w


def test_strong_view_moves_labels_and_confidences_together():
    random.seed(1)
    torch.manual_seed(1)
    batch, height, width = 3, 32, 32
    labels = torch.arange(batch).reshape(batch, 1, 1, 1).expand(batch, 2, height, width).clone()
    confidences = (labels.float() + 1) / 10  # confidence = (label + 1) / 10 wherever the label is real
    images = torch.randn(batch, 3, height, width)
    # scales below 1 always leave a padded border
    strong, out_labels, out_confidences = StrongView([0.5, 0.75], **NORM)(images, labels, confidences)
    assert strong.shape == images.shape and out_labels.shape == labels.shape
    real = out_labels != IGN
    assert real.any() and not real.all()
    assert torch.equal(out_confidences[real], (out_labels[real].float() + 1) / 10)
    assert torch.all(out_confidences[~real] == 0)  # padding: ignore and confidence 0
    assert torch.equal(out_labels[:, 0], out_labels[:, 1])  # both label maps share every draw


def test_strong_view_pastes_half_of_the_next_image():
    random.seed(2)
    labels = torch.arange(4).reshape(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    _, out_labels, _ = StrongView([1.0, 1.0], **NORM)(torch.zeros(4, 3, 16, 16), labels, torch.zeros(4, 1, 16, 16))
    for i in range(4):
        partner = out_labels[i, 0] == (i + 1) % 4
        rows, cols = partner.any(dim=1).nonzero(), partner.any(dim=0).nonzero()
        box_h, box_w = len(rows), len(cols)
        assert int(partner.sum()) == box_h * box_w  # one rectangle
        assert 9 <= box_w <= 15 and box_h == round(128 / box_w)
        assert int((out_labels[i, 0] == i).sum()) == 256 - box_h * box_w


# ---- params ----

@pytest.mark.parametrize("raw, key", [({"label": "both"}, "train.css.label"),
                                      ({"strong_scales": [2.0, 0.5]}, "train.css.strong_scales"),
                                      ({"unsup_threshold": 1.5}, "train.css.unsup_threshold"),
                                      ({"rampdown_epochs": 0}, "train.css.rampdown_epochs")])
def test_bad_settings_are_refused(raw, key):
    with pytest.raises(params.ParamsError, match=key):
        params.section("train", css=raw)


def test_project_params_file_loads_css_section():
    assert params.load("train").css.label in ("ori", "mix", "cross")


def test_contrast_weight_ramps_down_over_labelled_epochs():
    m = build(rampdown_epochs=200)
    assert [m.contrast_weight(e) for e in (0, 100, 200)] == pytest.approx([1.0, math.exp(-1.25), 0.0])
    assert build(label="ori").contrast_weight(500) == 1.0  # the ori script has no ramp
    assert build(rampdown_epochs=None).contrast_weight(500) == 1.0


# ---- training ----

def _grad_norm(loss, parameters):
    grads = torch.autograd.grad(loss, list(parameters), retain_graph=True, allow_unused=True)
    return sum(0.0 if g is None else float(g.abs().sum()) for g in grads)


def test_two_iterations_then_each_loss_reaches_its_parts(tmp_path, tiny):  # noqa: F811
    # unsup_threshold 0: every pixel is confident, so the unsupervised loss is not 0 at random init
    t = trainer(tmp_path, tiny, method="css", iters=2, css=dict(unsup_threshold=0.0, **SMALL))
    history = t.fit()
    assert {k.split("/")[1] for k in history} >= {"loss", "sup", "unsup", "contrast", "image_weight", "agreement"}
    assert all(math.isfinite(v) for v in history.values())
    method = t.method
    assert method.evaluated_network() is method.teacher
    assert torch.count_nonzero(method.prototypes.vectors.sum(dim=1)) > 0  # classes seen got a prototype
    assert not any(p.requires_grad for p in method.teacher.parameters())

    torch.manual_seed(3)
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.randint(0, 19, (2, 32, 32)),
             "unlabeled": torch.randn(2, 3, 32, 32)}
    out = method(batch, 2, 0)
    student = method.student
    body = list(student.backbone.parameters()) + list(student.head.parameters())
    projector = list(student.projector.parameters())
    classifier = list(student.head.classifier.parameters())
    for name in ("sup", "unsup"):
        assert _grad_norm(out[name], body) > 0 and _grad_norm(out[name], projector) == 0, name
    assert _grad_norm(out["contrast"], projector) > 0 and _grad_norm(out["contrast"], student.backbone.parameters()) > 0
    assert _grad_norm(out["contrast"], classifier) == 0
    optimised = {id(p) for group in method.param_groups(1e-4) for p in group["params"]}
    assert optimised == {id(p) for p in student.parameters()}
    undecayed = {id(p) for group in method.param_groups(1e-4) if group["weight_decay"] == 0 for p in group["params"]}
    projector_bn = [m for m in student.projector.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert projector_bn and all(id(m.weight) in undecayed and id(m.bias) in undecayed for m in projector_bn)


def test_resume_is_exact(tmp_path, tiny):  # noqa: F811
    css = SMALL
    uninterrupted = trainer(tmp_path / "once", tiny, method="css", css=css)
    uninterrupted.fit()
    trainer(tmp_path / "twice", tiny, method="css", css=css).fit(stop_after=2)  # stopped at the iteration-2 checkpoint
    resumed = trainer(tmp_path / "twice", tiny, method="css", css=css)
    resumed.fit()
    expected, got = uninterrupted.method.state_dict(), resumed.method.state_dict()
    assert expected.keys() == got.keys()
    assert [key for key in expected if not torch.equal(expected[key], got[key])] == []
    assert torch.count_nonzero(got["prototypes.vectors"]) > 0


def _pooled_update(rank, directory):
    torch.distributed.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=2)
    bank = PrototypeBank(num_classes=2, dim=2)
    # rank 0 sees class 0 at (1, 0); rank 1 sees it at (3, 0) and class 1 at (0, 4)
    vectors, labels = ([[1.0, 0.0]], [0]) if rank == 0 else ([[3.0, 0.0], [0.0, 4.0]], [0, 1])
    bank.update(_feature_map(vectors), _row(labels))
    torch.save(bank.vectors, f"{directory}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_prototypes_pool_every_rank(tmp_path):
    mp.spawn(_pooled_update, args=(str(tmp_path),), nprocs=2)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt").tolist() == [[2.0, 0.0], [0.0, 4.0]]


def test_css_trains_with_nesterov_sgd_and_a_floored_poly_rate(tmp_path, tiny):  # noqa: F811
    """The official recipe: Nesterov momentum, and lr = max(lr0 (1 - t/T)^0.9, 1e-4)."""
    t = trainer(tmp_path, tiny, method="css", iters=2, lr=0.01, css=SMALL)
    assert all(group["nesterov"] for group in t.optimizer.param_groups)
    t.fit()
    # the last step (t = 1 of T = 2): 0.01 * 0.5^0.9 = 0.005359 is above the floor
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 999, 1000, 0.9, t.method.min_lr) == pytest.approx(1e-4)  # 0.01 * 0.001^0.9 = 2e-5 -> floor
