"""Fixed class anchors: K unit vectors spread as uniformly as possible (docs/methods/stpg.md §6).

STPG ships its anchors as .npy files without the script that made them; they follow the
targeted-supervised-contrastive recipe, which `uniform_anchors` re-runs: minimise the mean
over i of logsumexp_j(x_i . x_j / t) over row-normalised X with Adam, and keep the lowest-loss
normalised iterate. The result is cached on disk because it takes seconds for K=19, d=256.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runtime.files import atomic_output

UNIFORMITY_TEMPERATURE = 0.07
LEARNING_RATE = 1e-3
# Measured (seed 0, float64): K=19/21, d=256 reach a regular simplex, every pairwise cosine
# within 1e-5 of -1/(K-1), after 5000 steps (seconds on one CPU core, once per cache); after
# 3000 steps they are within 4e-4, after 2000 within 4e-3 (about the spread of STPG's shipped files).
# The loss is computed in float64: in float32 it stops resolving improvements near the
# optimum and the lowest-loss iterate freezes ~6e-3 away from the simplex.
DEFAULT_STEPS = 5000
METHODS = ("optimise", "simplex")


class AnchorError(ValueError):
    """Anchors that cannot be made or loaded as asked; the message says what to change."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stpg-drive" / "anchors"


def _uniformity_loss(unit_rows: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(unit_rows @ unit_rows.T / UNIFORMITY_TEMPERATURE, dim=1).mean()


def optimise_anchors(num_classes: int, dim: int, steps: int = DEFAULT_STEPS, seed: int = 0) -> np.ndarray:
    """The uniformity-minimisation run itself, on the CPU, deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64).requires_grad_()
    optimiser = torch.optim.Adam([raw], lr=LEARNING_RATE)
    best_loss, best = float("inf"), None
    for step in range(steps + 1):  # iterates 0..steps are scored; the last needs no update
        unit_rows = F.normalize(raw, dim=1)
        loss = _uniformity_loss(unit_rows)
        if loss.item() < best_loss:
            best_loss, best = loss.item(), unit_rows.detach().clone()
        if step < steps:
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return best.float().numpy()


def simplex_anchors(num_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """A regular simplex in closed form, randomly rotated into R^dim (needs dim >= K-1).

    The centred one-hot vectors of R^K are a regular simplex in the (K-1)-dimensional subspace
    orthogonal to the all-ones vector; an orthonormal basis of that subspace gives their
    coordinates, and a random orthonormal frame of R^dim places them.
    """
    if dim < num_classes - 1:
        raise AnchorError(f"a regular simplex of {num_classes} points needs dim >= {num_classes - 1}, "
                          f"got {dim}; use method='optimise' or a larger dim")
    generator = torch.Generator().manual_seed(seed)
    centred = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    basis = torch.linalg.svd(centred).U[:, : num_classes - 1]  # spans the centred subspace
    coords = centred @ basis
    frame, _ = torch.linalg.qr(torch.randn(dim, num_classes - 1, generator=generator, dtype=torch.float64))
    return F.normalize(coords @ frame.T, dim=1).float().numpy()


def uniform_anchors(num_classes: int, dim: int, steps: int = DEFAULT_STEPS, seed: int = 0,
                    method: str = "optimise", cache_dir: str | Path | None = None) -> np.ndarray:
    """float32 (K, dim) unit anchors; optimised ones are cached under `cache_dir`.

    The cache file name carries K, dim, steps and seed, and is written atomically, so runs
    sharing a cache never read a half-written file.
    """
    if num_classes < 2 or dim < 2:
        raise AnchorError(f"anchors need num_classes >= 2 and dim >= 2, got K={num_classes}, dim={dim}")
    if method == "simplex":
        return simplex_anchors(num_classes, dim, seed)
    if method != "optimise":
        raise AnchorError(f"anchor method must be one of {', '.join(METHODS)}; got {method!r}")
    cache_path = Path(cache_dir or default_cache_dir()) / f"uniform_k{num_classes}_d{dim}_steps{steps}_seed{seed}.npy"
    if cache_path.exists():
        return load_anchors(cache_path, num_classes, dim)
    anchors = optimise_anchors(num_classes, dim, steps, seed)
    with atomic_output(cache_path) as temp, open(temp, "wb") as handle:
        np.save(handle, anchors)  # a handle: given a path, np.save would append .npy to the temp name
    return anchors


def load_anchors(path: str | Path, num_classes: int, dim: int) -> np.ndarray:
    """Read an anchor file (e.g. STPG's optimal_city_19_256.npy), checking shape and norms."""
    path = Path(path)
    try:
        anchors = np.load(path)
    except (OSError, ValueError) as exc:
        raise AnchorError(f"cannot read anchor file {path} ({exc}); point to a .npy of shape "
                          f"({num_classes}, {dim}) or delete it to regenerate") from None
    if anchors.shape != (num_classes, dim):
        raise AnchorError(f"anchor file {path} has shape {anchors.shape}, expected ({num_classes}, {dim}); "
                          "use the file made for this dataset's classes and the projection dim")
    norms = np.linalg.norm(anchors.astype(np.float64), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-4):
        raise AnchorError(f"anchor file {path} has rows that are not unit vectors "
                          f"(norms {norms.min():.4f}..{norms.max():.4f}); normalise the rows")
    return anchors.astype(np.float32)
