"""Scores by hand: the one implementation that evaluation, export parity and the runtime share."""
import math

import numpy as np
import pytest

from runtime.scoring import confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_counts_valid_pixels_only():
    truth = np.array([[0, 1, 1], [255, 7, 0]], np.uint8)  # 255 ignored, 7 is no class of K = 2
    predicted = np.array([[0, 1, 0], [1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(confusion_matrix(truth, predicted, 2), [[1, 1], [1, 1]])


def test_confusion_matrix_rows_are_truth_and_columns_are_predictions():
    truth = np.array([0, 0, 1], np.uint8)
    predicted = np.array([0, 1, 1], np.uint8)
    # one class-0 pixel predicted as 1: row 0 (truth), column 1 (prediction)
    np.testing.assert_array_equal(confusion_matrix(truth, predicted, 2), [[1, 1], [0, 1]])


def test_iou_and_nan_mean_over_present_classes():
    confusion = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    # class 0: 3 / (3 + 2 + 1) = 0.5; class 1: 4 / (4 + 1 + 2) = 4/7; class 2 never seen -> NaN.
    ious = iou_per_class(confusion)
    assert ious[:2] == pytest.approx([0.5, 4 / 7]) and math.isnan(ious[2])
    assert mean_iou(confusion) == pytest.approx((0.5 + 4 / 7) / 2)
    assert math.isnan(mean_iou(np.zeros((2, 2), np.int64)))


def test_predictions_outside_the_classes_are_not_counted():
    truth = np.array([0, 1, 1], np.uint8)
    predicted = np.array([0, 9, 1], np.uint8)  # 9 is no class of K = 2: the pixel is left out
    np.testing.assert_array_equal(confusion_matrix(truth, predicted, 2), [[1, 0], [0, 1]])
