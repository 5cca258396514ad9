"""CPCL: the worked cases C1-C5 of docs/methods/cpcl.md, gradient routing and exact resume."""
import math

import pytest
import torch

from tests.training.test_engine import tiny, trainer  # noqa: F401  (tiny is a fixture)
from training import params
from training.methods.base import mixed_pseudo_labels
from training.methods.cpcl import collaborative_labels, overlap
from training.methods.losses import IGNORE_INDEX, weighted_ce
from training.methods.selection import mismatch_weights

IGN = IGNORE_INDEX
EPS = params.section("train").cpcl.mismatch_eps


def _labels(values):
    return torch.tensor(values, dtype=torch.long)


def _rule(labels_1, labels_2, num_classes, confidence_1=None, confidence_2=None):
    confidence_1 = torch.ones(len(labels_1)) if confidence_1 is None else torch.tensor(confidence_1)
    confidence_2 = torch.ones(len(labels_2)) if confidence_2 is None else torch.tensor(confidence_2)
    return collaborative_labels(_labels(labels_1), confidence_1, _labels(labels_2), confidence_2, num_classes, EPS)


def test_c1_mismatch_weights_and_tie_goes_to_the_second_network():
    y1, y2 = [0, 0, 1, 2], [0, 1, 1, 1]
    # d = [1/3, 1/2, 1/2] over a sum of 4/3 (+ eps)
    weights = mismatch_weights(_labels(y1), _labels(y2), 3, eps=EPS)
    assert weights.tolist() == pytest.approx([0.25, 0.375, 0.375], abs=1e-6)
    intersection, _, union, _ = _rule(y1, y2, 3)
    assert intersection.tolist() == [0, IGN, 1, IGN]
    assert union.tolist() == [0, 1, 1, 1]  # pixel 3: w2 == w1, so N2's class 1


def test_c2_either_network_can_win():
    y1, y2 = [0, 0, 0, 1, 2, 2], [0, 1, 2, 1, 2, 0]
    weights = mismatch_weights(_labels(y1), _labels(y2), 3, eps=EPS)
    assert weights.tolist() == pytest.approx([5 / 11, 2 / 11, 4 / 11], abs=1e-6)
    assert weights.tolist() == pytest.approx([0.4545, 0.1818, 0.3636], abs=1e-4)
    intersection, _, union, union_weight = _rule(y1, y2, 3, confidence_1=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                                                 confidence_2=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert intersection.tolist() == [0, IGN, IGN, 1, 2, IGN]
    assert union.tolist() == [0, 0, 0, 1, 2, 0]
    # agreeing pixels the mean confidence, disputed ones the winner's: N1 at 1 and 2, N2 at 5
    assert union_weight.tolist() == pytest.approx([0.5, 0.8, 0.7, 0.5, 0.5, 0.6])


def test_c3_losses_count_every_pixel_and_take_the_winner_confidence():
    intersection, intersection_weight, union, union_weight = _rule(
        [0, 1], [0, 0], 2, confidence_1=[0.9, 0.6], confidence_2=[0.7, 0.8])
    assert union.tolist() == [0, 1]
    assert union_weight.tolist() == pytest.approx([0.8, 0.6])
    assert intersection_weight.tolist() == pytest.approx([0.8, 0.7])  # pixel 1 is ignored anyway
    logits = torch.zeros(1, 2, 1, 2)  # CE = ln 2 on every labelled pixel
    inter = weighted_ce(logits, intersection.reshape(1, 1, 2), intersection_weight.reshape(1, 1, 2))
    uni = weighted_ce(logits, union.reshape(1, 1, 2), union_weight.reshape(1, 1, 2))
    assert inter.item() == pytest.approx(0.8 * math.log(2) / 2, abs=1e-6)
    assert inter.item() == pytest.approx(0.27726, abs=1e-5)
    assert uni.item() == pytest.approx(1.4 * math.log(2) / 2, abs=1e-6)
    assert uni.item() == pytest.approx(0.48520, abs=1e-5)


def test_c4_logits_are_mixed_per_pixel_with_their_own_confidence():
    # C = 2 logit maps as "images"; the identity network returns them as its logits.
    u0 = torch.tensor([[2.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    u1 = torch.tensor([[0.0, 0.0], [3.0, 0.5]]).reshape(1, 2, 1, 2)
    mask = torch.tensor([[[0, 1]]], dtype=torch.uint8)
    label, confidence = mixed_pseudo_labels(torch.nn.Identity(), u0, u1, mask)
    assert label.tolist() == [[[0, 1]]]
    two_class_softmax = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-0.5))]
    assert confidence.flatten().tolist() == pytest.approx(two_class_softmax, abs=1e-6)
    assert confidence.flatten().tolist() == pytest.approx([0.880797, 0.622459], abs=1e-6)


def test_c1_overlap_is_the_trace_share_of_the_smoothed_confusion():
    # A = [[2,1,0],[0,2,0],[0,1,1]] with the +I prior: trace 5 of 7 (the unsmoothed share is 2/4)
    first, second = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1])
    assert float(overlap(first, second, 3)) == pytest.approx(5 / 7)


def test_c5_complete_agreement_gives_zero_weights_not_nan():
    labels = _labels([0, 2, 1])
    assert mismatch_weights(labels, labels.clone(), 3, eps=EPS).tolist() == [0.0, 0.0, 0.0]
    assert all(math.isnan(w) for w in mismatch_weights(labels, labels.clone(), 3).tolist())
    intersection, _, union, _ = _rule([0, 2, 1], [0, 2, 1], 3)
    assert intersection.tolist() == union.tolist() == [0, 2, 1]


def test_negative_eps_is_refused():
    with pytest.raises(params.ParamsError, match=r"train\.cpcl\.mismatch_eps must be >= 0"):
        params.section("train", cpcl={"mismatch_eps": -1.0})


def test_project_params_file_loads_cpcl_section():
    assert params.load("train").cpcl.mismatch_eps == pytest.approx(1e-6)


def _grad_norms(loss, network):
    grads = torch.autograd.grad(loss, list(network.parameters()), retain_graph=True, allow_unused=True)
    return sum(0.0 if g is None else float(g.abs().sum()) for g in grads)


def test_two_iterations_then_each_loss_reaches_only_its_network(tmp_path, tiny):  # noqa: F811
    t = trainer(tmp_path, tiny, method="cpcl", iters=2)
    history = t.fit()
    assert {k.split("/")[1] for k in history} >= {"loss", "sup", "intersection", "union", "overlap", "lr"}
    assert all(math.isfinite(v) for v in history.values())
    method = t.method
    assert method.evaluated_network() is method.conservative
    assert method.teachers() == []  # no EMA copies: the networks teach themselves
    assert sum(p.numel() for p in method.parameters()) == 2 * sum(p.numel() for p in method.conservative.parameters())

    torch.manual_seed(3)
    image = torch.randn(2, 3, 32, 32)
    batch = {"image": image, "label": torch.randint(0, 19, (2, 32, 32)), "unlabeled": torch.randn(2, 3, 32, 32),
             "mix": torch.randn(2, 3, 32, 32), "mask": (torch.rand(2, 32, 32) > 0.5).to(torch.uint8)}
    out = method(batch, 2, 0)
    n1, n2 = method.conservative, method.progressive
    assert _grad_norms(out["intersection"], n1) > 0 and _grad_norms(out["intersection"], n2) == 0
    assert _grad_norms(out["union"], n2) > 0 and _grad_norms(out["union"], n1) == 0
    assert _grad_norms(out["sup"], n1) > 0 and _grad_norms(out["sup"], n2) > 0


def test_resume_is_exact(tmp_path, tiny):  # noqa: F811
    uninterrupted = trainer(tmp_path / "once", tiny, method="cpcl")
    uninterrupted.fit()
    trainer(tmp_path / "twice", tiny, method="cpcl").fit(stop_after=2)  # stopped at the iteration-2 checkpoint
    resumed = trainer(tmp_path / "twice", tiny, method="cpcl")
    resumed.fit()
    expected, got = uninterrupted.method.state_dict(), resumed.method.state_dict()
    assert expected.keys() == got.keys()
    assert [key for key in expected if not torch.equal(expected[key], got[key])] == []
    # 4 iterations x 4 passes of N1 (labelled, two pseudo-label passes, mixed), all in train mode
    assert int(got["conservative.backbone.bn1.num_batches_tracked"]) == 16
