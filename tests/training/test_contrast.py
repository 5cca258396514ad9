"""Prototypes, Hungarian matching, memory bank and anchor-contrastive loss:
docs/methods/stpg.md §6, T5-T9."""
import math

import pytest
import torch
import torch.nn.functional as F

from training.methods.contrast import (MemoryBank, Prototypes, anchor_contrast_loss, memory_filter,
                                       per_class_insertions)

SQRT3_2 = math.sqrt(3) / 2
# T5: anchors at 0, 120 and 240 degrees, identity assignment.
ANCHORS = torch.tensor([[1.0, 0.0], [-0.5, SQRT3_2], [-0.5, -SQRT3_2]])


def _feature_map(vectors):
    """(N, D) vectors as a (1, D, 1, N) feature map, raster order preserved."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, -1, 1, len(vectors))


def _labels(values):
    return torch.tensor(values, dtype=torch.long).reshape(1, 1, -1)


# ---- L_con (T5, T6) ----

def test_t5_anchor_loss():
    # cosines [1, -.5, -.5] / 0.5 -> logits [2, -1, -1]; L_anc_0 = ln(e^2 + 2e^-1) - 2 = 0.094923
    features = _feature_map([[2.0, 0.0], [3.0, 0.0]])
    loss = anchor_contrast_loss(features, _labels([0, 0]), ANCHORS, MemoryBank(3, 2))
    assert loss.item() == pytest.approx(0.031641, abs=1e-6)  # / K = 3
    assert anchor_contrast_loss(features, _labels([0, 0]), ANCHORS, None).item() == pytest.approx(0.031641, abs=1e-6)


def test_t5_wrong_class():
    # label 1: 1 + ln(e^2 + 2e^-1) = 3.094923, / 3 = 1.031641
    features = _feature_map([[2.0, 0.0], [3.0, 0.0]])
    loss = anchor_contrast_loss(features, _labels([1, 1]), ANCHORS, MemoryBank(3, 2))
    assert loss.item() == pytest.approx(3.094923 / 3, abs=1e-6)


def test_t5_single_feature_contributes_nothing():
    features = _feature_map([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    # class 0 as before, one feature of class 2 adds 0
    assert anchor_contrast_loss(features, _labels([0, 0, 2]), ANCHORS, None).item() == pytest.approx(0.031641, abs=1e-6)
    assert anchor_contrast_loss(features[..., :1], _labels([0]), ANCHORS, None).item() == 0.0


def test_ignored_labels_are_dropped():
    features = _feature_map([[2.0, 0.0], [0.0, -5.0], [3.0, 0.0]])
    assert anchor_contrast_loss(features, _labels([0, 255, 0]), ANCHORS, None).item() == pytest.approx(0.031641, abs=1e-6)
    assert anchor_contrast_loss(features, _labels([255, 255, 255]), ANCHORS, None).item() == 0.0


def _memory_with_class0(vectors):
    bank = MemoryBank(3, 2)
    bank.insert(torch.tensor(vectors), torch.zeros(len(vectors), dtype=torch.long), per_class=3)
    return bank


def test_t6_similarity_loss():
    # M_0 = {(1,0), (0,1)}: distances {0, 1}, L_sim_0 = 0.5; (0.094923 + 0.5) / 3 = 0.198308
    features = _feature_map([[2.0, 0.0], [3.0, 0.0]])
    bank = _memory_with_class0([[1.0, 0.0], [0.0, 1.0]])
    assert anchor_contrast_loss(features, _labels([0, 0]), ANCHORS, bank).item() == pytest.approx(0.198308, abs=1e-6)


def test_similarity_needs_two_memory_entries():
    features = _feature_map([[2.0, 0.0], [3.0, 0.0]])
    bank = _memory_with_class0([[0.0, 1.0]])
    assert anchor_contrast_loss(features, _labels([0, 0]), ANCHORS, bank).item() == pytest.approx(0.031641, abs=1e-6)


def test_labels_at_full_resolution_are_sampled_at_stride():
    # feature grid 1x2 from an 4x8 label map: pixels (0,0) and (0,4) are used
    labels = torch.full((1, 4, 8), 1, dtype=torch.long)
    labels[0, 0, 0] = 0
    labels[0, 0, 4] = 0
    features = _feature_map([[2.0, 0.0], [3.0, 0.0]])
    assert anchor_contrast_loss(features, labels, ANCHORS, None).item() == pytest.approx(0.031641, abs=1e-6)


def test_batched_loss_matches_the_pairwise_definition():
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(4, 6), dim=1)
    features = torch.randn(2, 6, 3, 5)
    labels = torch.randint(0, 5, (2, 3, 5))  # class 4 is out of range for K = 4: dropped
    labels[0, 0, :2] = 3  # at least two of class 3
    bank = MemoryBank(4, 6, capacity=8)
    bank.insert(torch.randn(20, 6), torch.randint(0, 4, (20,)), per_class=5)

    # the formula of docs/methods/stpg.md §6, written out class by class and pair by pair
    flat = features.permute(0, 2, 3, 1).reshape(-1, 6)
    flat_labels = labels.reshape(-1)
    expected = 0.0
    for c in range(4):
        members = F.normalize(flat[flat_labels == c], dim=1)
        if len(members) > 1:
            log_prob = torch.log_softmax(members @ anchors.T / 0.5, dim=1)
            expected += -log_prob[:, c].mean()
            stored = F.normalize(bank.get(c), dim=1)
            if len(stored) > 1:
                expected += (1 - members @ stored.T).mean()
    expected /= 4
    assert anchor_contrast_loss(features, labels, anchors, bank).item() == pytest.approx(expected.item(), abs=1e-6)


def test_gradient_reaches_features_only():
    features = _feature_map([[2.0, 0.5], [3.0, -0.2]]).requires_grad_()
    anchors = ANCHORS.clone().requires_grad_()
    bank = _memory_with_class0([[1.0, 0.0], [0.0, 1.0]])
    anchor_contrast_loss(features, _labels([0, 0]), anchors, bank).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert anchors.grad is None


# ---- prototypes (T7) and Hungarian matching (T8) ----

def test_t7_prototype_momentum():
    # nu = normalize(mean(normalize((3,4)), normalize((0,2)))) = normalize((0.3, 0.9))
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    for momentum, expected in ((0.9, (0.994855, 0.101307)), (0.99, (0.999954, 0.009552))):
        prototypes = Prototypes(1, 2, momentum=momentum)
        prototypes.centroids.copy_(torch.tensor([[1.0, 0.0]]))
        prototypes.update(features, torch.tensor([0, 0]))
        assert prototypes.centroids[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_unobserved_and_ignored_classes_keep_their_centroid():
    prototypes = Prototypes(3, 2)
    before = prototypes.centroids.clone()
    features = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-7.0, 1.0]])
    prototypes.update(features, torch.tensor([1, 1, 255]))
    assert torch.equal(prototypes.centroids[0], before[0])
    assert torch.equal(prototypes.centroids[2], before[2])
    assert not torch.equal(prototypes.centroids[1], before[1])
    assert torch.linalg.vector_norm(prototypes.centroids, dim=1).tolist() == pytest.approx([1, 1, 1], abs=1e-6)


def test_initial_state_is_seeded_unit_vectors():
    a, b = Prototypes(4, 8, seed=5), Prototypes(4, 8, seed=5)
    assert torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.centroids, Prototypes(4, 8, seed=6).centroids)
    assert torch.linalg.vector_norm(a.centroids, dim=1).tolist() == pytest.approx([1] * 4, abs=1e-6)
    assert a.assignment.tolist() == [-1] * 4


def test_t8_two_classes_swap():
    prototypes = Prototypes(2, 2)
    prototypes.centroids.copy_(torch.tensor([[-0.8, 0.6], [0.6, 0.8]]))
    anchors = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert prototypes.assign(anchors).tolist() == [1, 0]
    assert prototypes.assigned_anchors.tolist() == [[-1.0, 0.0], [1.0, 0.0]]


def test_t8_three_classes():
    # cosines: (0,1) -> [0, .866, -.866]; (1,0) -> [1, -.5, -.5]; (-1,0) -> [-1, .5, .5]
    prototypes = Prototypes(3, 2)
    prototypes.centroids.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]))
    assert prototypes.assign(ANCHORS).tolist() == [1, 0, 2]
    assert torch.equal(prototypes.assigned_anchors, ANCHORS[[1, 0, 2]])


def test_assign_refuses_wrong_anchor_shape():
    with pytest.raises(ValueError, match="anchor file"):
        Prototypes(3, 2).assign(torch.zeros(4, 2))


def test_prototype_state_round_trip():
    prototypes = Prototypes(3, 2, seed=1)
    prototypes.update(torch.tensor([[1.0, 2.0]] * 2), torch.tensor([2, 2]))
    prototypes.assign(ANCHORS)
    restored = Prototypes(3, 2, seed=9)
    restored.load_state_dict(prototypes.state_dict())
    for name in ("centroids", "assigned_anchors", "assignment"):
        assert torch.equal(getattr(restored, name), getattr(prototypes, name))


# ---- memory bank (T9) ----

# Ten class-0 features in raster order, at these angles (degrees) and alternating lengths.
ANGLES = [50, 10, 80, 30, 5, 60, 20, 90, 40, 70]
TEN = torch.tensor([[(1 + i % 2) * math.cos(math.radians(a)), (1 + i % 2) * math.sin(math.radians(a))]
                    for i, a in enumerate(ANGLES)])
ANCHOR_ROWS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0's assigned anchor is (1, 0)


def test_t9_proximity_takes_the_closest_three():
    bank = MemoryBank(2, 2)
    bank.insert(TEN, torch.zeros(10, dtype=torch.long), per_class=3, proximity_anchors=ANCHOR_ROWS)
    # closest to (1,0): 5 deg (index 4), 10 deg (index 1), 20 deg (index 6); stored raw
    assert torch.equal(bank.get(0), TEN[[4, 1, 6]])
    assert bank.counts.tolist() == [3, 0]


def test_t9_before_proximity_takes_the_first_three_in_raster_order():
    bank = MemoryBank(2, 2)
    bank.insert(TEN, torch.zeros(10, dtype=torch.long), per_class=3)
    assert torch.equal(bank.get(0), TEN[:3])


def test_t9_fifo_drops_the_oldest_at_capacity():
    bank = MemoryBank(1, 2, capacity=256)
    for i in range(256):
        bank.insert(torch.tensor([[float(i), 0.0]]), torch.tensor([0]), per_class=3)
    assert bank.get(0)[:, 0].tolist() == [float(i) for i in range(255, -1, -1)]  # newest first
    new = torch.tensor([[-1.0, 1.0], [-2.0, 1.0], [-3.0, 1.0]])
    bank.insert(new, torch.zeros(3, dtype=torch.long), per_class=3)
    stored = bank.get(0)
    assert stored.shape == (256, 2)
    assert torch.equal(stored[:3], new)
    # 0, 1 and 2 (the three oldest) fell off
    assert stored[3:, 0].tolist() == [float(i) for i in range(255, 2, -1)]


def test_small_classes_insert_everything_in_raster_order():
    # two features <= n = 3: both go in, in raster order although the second is closer
    bank = MemoryBank(2, 2)
    pair = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    bank.insert(pair, torch.tensor([0, 0]), per_class=3, proximity_anchors=ANCHOR_ROWS)
    assert torch.equal(bank.get(0), pair)


def test_classes_are_filled_independently_and_ignored_labels_skipped():
    bank = MemoryBank(3, 2, capacity=4)
    features = torch.arange(16, dtype=torch.float32).reshape(8, 2)
    labels = torch.tensor([1, 0, 255, 1, 1, 0, 1, 255])
    bank.insert(features, labels, per_class=2)
    assert torch.equal(bank.get(0), features[[1, 5]])
    assert torch.equal(bank.get(1), features[[0, 3]])
    assert bank.get(2).shape == (0, 2)
    bank.insert(features, labels, per_class=2)
    assert torch.equal(bank.get(1), features[[0, 3, 0, 3]])
    assert bank.counts.tolist() == [4, 4, 0]
    assert torch.equal(bank.features[2], torch.zeros(4, 2))  # untouched slots stay zero


def test_insert_more_than_capacity():
    bank = MemoryBank(1, 1, capacity=2)
    bank.insert(torch.tensor([[1.0], [2.0], [3.0]]), torch.zeros(3, dtype=torch.long), per_class=5)
    assert bank.get(0).flatten().tolist() == [1.0, 2.0]


def test_memory_state_round_trip():
    bank = MemoryBank(2, 2)
    bank.insert(TEN, torch.zeros(10, dtype=torch.long), per_class=3)
    restored = MemoryBank(2, 2)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.features, bank.features)
    assert torch.equal(restored.counts, bank.counts)


@pytest.mark.parametrize("num_labeled", [185, 371, 743, 1487])
def test_insertions_cityscapes(num_labeled):
    # B * max(1, round(256 / N_l)) = 3 * 1 at every split
    assert per_class_insertions("cityscapes", 3, num_labeled, 19) == 3


@pytest.mark.parametrize("num_labeled, expected", [(183, 56), (366, 56), (732, 8), (1464, 8)])
def test_insertions_voc(num_labeled, expected):
    # 8 * max(1, floor(21/3 * round(256 / N_l))): round(1.40) = round(0.70) = 1 -> 8*7 = 56;
    # round(0.35) = round(0.17) = 0 -> 8 * 1
    assert per_class_insertions("voc", 8, num_labeled, 21) == expected


def test_insertions_unknown_dataset():
    with pytest.raises(ValueError, match="dataset"):
        per_class_insertions("ade20k", 8, 100, 150)


def test_memory_filter_keeps_confident_correct_pixels():
    # 8x8 crop, 2x2 feature grid: pixels (0,0), (0,4), (4,0), (4,4) are sampled
    logits = torch.zeros(1, 2, 8, 8)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    logits[0, 1, 0, 0] = 10.0   # (0,0): predicts 1 with p = 0.99995, GT 1 -> kept
    labels[0, 0, 0] = 1
    logits[0, 0, 0, 4] = 1.0    # (0,4): predicts 0 with p = 0.731 < 0.95 -> dropped
    logits[0, 0, 4, 0] = 10.0   # (4,0): predicts 0 confidently, GT 1 -> dropped
    labels[0, 4, 0] = 1
    logits[0, 0, 4, 4] = 10.0   # (4,4): GT 255 -> dropped
    labels[0, 4, 4] = 255
    logits[0, 0, 1, 1] = 10.0   # off-grid pixels are never looked at
    features = torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2)
    flat, kept = memory_filter(logits, labels, features)
    assert kept.tolist() == [1, 255, 255, 255]
    assert flat.tolist() == [[0.0, 4.0, 8.0], [1.0, 5.0, 9.0], [2.0, 6.0, 10.0], [3.0, 7.0, 11.0]]
    assert memory_filter(logits, labels, features, conf_thresh=0.7)[1].tolist() == [1, 0, 255, 255]
