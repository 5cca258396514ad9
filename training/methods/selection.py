"""Class mismatch scores and the Pro-Student's pixel selection (docs/methods/stpg.md §5).

The score of a class is (1 - precision) + (1 - recall) between two hard labelings of the same
pixels, read off a confusion matrix; CPCL's union rule uses the same score.
"""
from __future__ import annotations

import torch


def confusion_matrix(truth: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,K) int64 counts C[i, j] = #{p : truth_p = i, predicted_p = j}, on the inputs' device.

    The argument order of runtime.scoring.confusion_matrix: rows are the first labeling (the
    teacher's here), columns the second.

    Pixels where either label lies outside [0, K) (e.g. 255 = ignore) are not counted: they go
    to one spare bin that is dropped, so no boolean indexing and no host sync. This uses
    `index_add_` rather than `torch.bincount`, which reads the input's maximum back to the host
    on CUDA to size its output.
    """
    truth = truth.reshape(-1)
    predicted = predicted.reshape(-1)
    if truth.shape != predicted.shape:
        raise ValueError(f"label tensors differ in size: {truth.numel()} vs {predicted.numel()}")
    k = num_classes
    in_range = (truth >= 0) & (truth < k) & (predicted >= 0) & (predicted < k)
    bins = torch.where(in_range, truth.long() * k + predicted.long(), k * k)
    counts = torch.zeros(k * k + 1, dtype=torch.int64, device=truth.device)
    counts.index_add_(0, bins, torch.ones(1, dtype=torch.int64, device=truth.device).expand_as(bins))
    return counts[: k * k].reshape(k, k)


def mismatch_weights(teacher_labels: torch.Tensor, student_labels: torch.Tensor,
                     num_classes: int, eps: float = 0.0) -> torch.Tensor:
    """w_c = s_c / (sum_k s_k + eps) with s_c = (Q_c - D_c)/Q_c + (R_c - D_c)/R_c, float64, shape (K,).

    C gets one extra count on its diagonal (the reference appends each class once to both
    label vectors), so no row or column sum is 0. When the two labelings agree everywhere,
    sum(s) = 0 and w is all NaN, on purpose: NaN compares false, so `select_pixels` then keeps
    only the consistent pixels, which is the reference behaviour (docs/methods/stpg.md §5). CPCL passes
    eps = 1e-6, so there complete agreement gives w = 0 instead (docs/methods/cpcl.md).
    The score is symmetric in the two labelings, so their order does not change w.
    """
    confusion = confusion_matrix(teacher_labels, student_labels, num_classes).double()
    confusion += torch.eye(num_classes, dtype=torch.float64, device=confusion.device)
    diagonal = confusion.diagonal()
    row_sums = confusion.sum(dim=1)
    col_sums = confusion.sum(dim=0)
    scores = (col_sums - diagonal) / col_sums + (row_sums - diagonal) / row_sums
    return scores / (scores.sum() + eps)


def select_pixels(teacher_labels: torch.Tensor, student_labels: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """Float mask m_p = 1 for consistent pixels and for highly mismatched ones, else 0.

    Highly mismatched: the labels differ and w[teacher] > w[student] strictly; ties and NaN
    weights count as low mismatched and are dropped.
    """
    weights = mismatch_weights(teacher_labels, student_labels, num_classes)
    consistent = teacher_labels == student_labels
    highly_mismatched = weights[teacher_labels] > weights[student_labels]
    return (consistent | highly_mismatched).float()
