"""Iteration bookkeeping shared by the training methods (docs/methods/stpg.md §2, §7).

Everything is counted in iterations: an "epoch" is `iters_per_epoch` iterations of the three
equal-length loaders, and epoch-based switches (memory bank, contrastive loss) are evaluated on
`epoch_of(iteration)`.
"""
from __future__ import annotations

import math


def poly_lr(base_lr: float, iteration: int, total_iters: int, power: float = 0.9,
            min_lr: float = 0.0) -> float:
    """eta_0 * (1 - t/T)^power, floored at `min_lr` (CSS floors at 1e-4; STPG/CPCL use 0).

    Past the end (t > T) the factor is held at 0 rather than raising a negative number to a
    fractional power.
    """
    if total_iters <= 0:
        raise ValueError(f"total_iters must be positive, got {total_iters}")
    factor = max(0.0, 1.0 - iteration / total_iters) ** power
    return max(base_lr * factor, min_lr)


def sigmoid_rampup(iteration: int, rampup_iters: float) -> float:
    """exp(-5 (1 - t/T)^2) for t < T, then 1: the unsupervised-weight ramp of mean-teacher work."""
    if iteration >= rampup_iters:
        return 1.0
    return math.exp(-5.0 * (1.0 - iteration / rampup_iters) ** 2)


def split_sizes(pool: int, ratio: int) -> tuple[int, int]:
    """(N_l, N_u) for a 1/ratio labeled split of `pool` images: N_l = floor(pool / ratio)."""
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (1/ratio of the pool is labeled), got {ratio}")
    n_labeled = pool // ratio
    return n_labeled, pool - n_labeled


def iters_per_epoch(n_labeled: int, n_unlabeled: int, batch_size: int) -> int:
    """floor(max(N_l, N_u) / B): every loader is stretched to the longer list, drop_last."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(n_labeled, n_unlabeled) // batch_size


def epoch_of(iteration: int, iterations_per_epoch: int) -> int:
    """0-based epoch of a global iteration t = e * N_it + i."""
    if iterations_per_epoch < 1:
        raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
    return iteration // iterations_per_epoch
