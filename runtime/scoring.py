"""Segmentation scores from a confusion matrix, shared by evaluation, export parity and the runtime.

NumPy only, so the deployed runtime scores without torch. mIoU is a fraction in [0, 1]
everywhere it is stored; only printed figures and export tolerances speak in points.
"""
from __future__ import annotations

import math

import numpy as np

IGNORE_LABEL = 255


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int,
                     ignore: int = IGNORE_LABEL) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted; `ignore` and ids >= K skipped."""
    truth = truth.reshape(-1).astype(np.int64)
    predicted = predicted.reshape(-1).astype(np.int64)
    valid = (truth != ignore) & (truth < num_classes) & (predicted < num_classes)
    pairs = truth[valid] * num_classes + predicted[valid]
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN for a class neither present nor predicted."""
    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean over the classes that occur (NaN-mean); NaN when no pixel was scored."""
    ious = iou_per_class(confusion)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else math.nan
