"""Mismatch scores and pixel selection: docs/methods/stpg.md §5, T1, T3 and T4."""
import math

import pytest
import torch

from training.methods.selection import confusion_matrix, mismatch_weights, select_pixels


def _labels(values):
    return torch.tensor(values, dtype=torch.long)


def test_t1_confusion_weights_and_mask():
    teacher = _labels([0, 0, 0, 0, 1, 1, 2, 2])
    student = _labels([0, 0, 0, 1, 1, 2, 2, 0])
    assert confusion_matrix(teacher, student, 3).tolist() == [[3, 1, 0], [0, 1, 1], [1, 0, 1]]
    # With +I: R = Q = [5, 3, 3], D = [4, 2, 2], s = [0.4, 2/3, 2/3], w = [3/13, 5/13, 5/13]
    weights = mismatch_weights(teacher, student, 3)
    assert weights.dtype == torch.float64
    assert weights.tolist() == pytest.approx([3 / 13, 5 / 13, 5 / 13], abs=1e-12)
    # pixel 3: 3/13 > 5/13 false; pixel 5: tie; pixel 7: 5/13 > 3/13 kept
    assert select_pixels(teacher, student, 3).tolist() == [1, 1, 1, 0, 1, 0, 1, 1]


def test_t3_minority_class_kept():
    teacher = _labels([0, 0, 1, 1])
    student = _labels([0, 0, 0, 0])
    # C = [[3, 0], [2, 1]], s = [0.4, 2/3], w = [0.375, 0.625]
    assert mismatch_weights(teacher, student, 2).tolist() == pytest.approx([0.375, 0.625], abs=1e-12)
    assert select_pixels(teacher, student, 2).tolist() == [1, 1, 1, 1]


def test_t4_absent_class_and_tie():
    teacher = _labels([0, 0, 1, 1, 0])
    student = _labels([0, 1, 1, 1, 0])
    # C = [[3, 1, 0], [0, 3, 0], [0, 0, 1]], s = [0.25, 0.25, 0], w = [0.5, 0.5, 0]
    assert mismatch_weights(teacher, student, 3).tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-12)
    assert select_pixels(teacher, student, 3).tolist() == [1, 0, 1, 1, 1]


def test_t4_perfect_agreement_gives_nan_and_keeps_consistent_pixels():
    labels = _labels([0, 2, 1, 1, 0])
    weights = mismatch_weights(labels, labels.clone(), 3)
    assert all(math.isnan(w) for w in weights.tolist())
    assert select_pixels(labels, labels.clone(), 3).tolist() == [1, 1, 1, 1, 1]


def test_batched_maps_keep_their_shape():
    # T1 laid out as a (2, 2, 2) batch: the statistics are pooled over the whole batch.
    teacher = _labels([0, 0, 0, 0, 1, 1, 2, 2]).reshape(2, 2, 2)
    student = _labels([0, 0, 0, 1, 1, 2, 2, 0]).reshape(2, 2, 2)
    mask = select_pixels(teacher, student, 3)
    assert mask.shape == (2, 2, 2) and mask.dtype == torch.float32
    assert mask.flatten().tolist() == [1, 1, 1, 0, 1, 0, 1, 1]


def test_confusion_skips_out_of_range_labels():
    ground_truth = _labels([0, 1, 255, 1, 2])
    prediction = _labels([0, 1, 1, 2, 7])
    # pixel 2 (GT 255) and pixel 4 (prediction 7) are not counted
    assert confusion_matrix(ground_truth, prediction, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_confusion_size_mismatch():
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(_labels([0, 1]), _labels([0]), 2)
