"""Class anchors: docs/methods/stpg.md §6 (regular simplex, pairwise cosine -1/(K-1))."""
import numpy as np
import pytest

from training.methods import anchors as anchors_module
from training.methods.anchors import AnchorError, load_anchors, optimise_anchors, uniform_anchors


def _off_diagonal_cosines(anchors):
    cosine = anchors.astype(np.float64) @ anchors.astype(np.float64).T
    return cosine[~np.eye(len(anchors), dtype=bool)]


def test_optimisation_reaches_a_regular_simplex():
    # K = 5: the ideal pairwise cosine is -1/4. At d = 8 the Adam run (lr 1e-3) needs ~10k steps.
    anchors = optimise_anchors(5, 8, steps=10000, seed=0)
    assert anchors.dtype == np.float32 and anchors.shape == (5, 8)
    assert np.allclose(np.linalg.norm(anchors, axis=1), 1.0, atol=1e-6)
    assert np.abs(_off_diagonal_cosines(anchors) + 0.25).max() < 0.005


def test_optimisation_is_deterministic_per_seed():
    first = optimise_anchors(4, 6, steps=50, seed=3)
    assert np.array_equal(first, optimise_anchors(4, 6, steps=50, seed=3))
    assert not np.array_equal(first, optimise_anchors(4, 6, steps=50, seed=4))


def test_more_steps_spread_the_anchors():
    # The uniformity loss pushes the closest pair apart.
    start = _off_diagonal_cosines(optimise_anchors(4, 6, steps=0, seed=1)).max()
    later = _off_diagonal_cosines(optimise_anchors(4, 6, steps=500, seed=1)).max()
    assert later < start


def test_closed_form_simplex():
    anchors = uniform_anchors(19, 256, method="simplex", seed=2)
    assert anchors.dtype == np.float32 and anchors.shape == (19, 256)
    assert np.allclose(np.linalg.norm(anchors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(_off_diagonal_cosines(anchors), -1 / 18, atol=1e-6)
    # the tightest case, d = K - 1: a triangle in the plane
    triangle = uniform_anchors(3, 2, method="simplex")
    assert np.allclose(_off_diagonal_cosines(triangle), -0.5, atol=1e-6)


def test_simplex_needs_enough_dimensions():
    with pytest.raises(AnchorError, match="dim >= 4"):
        uniform_anchors(5, 3, method="simplex")


def test_unknown_method():
    with pytest.raises(AnchorError, match="method"):
        uniform_anchors(5, 8, method="random")


def test_cache_hit_skips_recomputation(tmp_path, monkeypatch):
    made = uniform_anchors(4, 6, steps=20, seed=0, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["uniform_k4_d6_steps20_seed0.npy"]

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed despite a cached file")

    monkeypatch.setattr(anchors_module, "optimise_anchors", refuse)
    assert np.array_equal(uniform_anchors(4, 6, steps=20, seed=0, cache_dir=tmp_path), made)
    with pytest.raises(AssertionError, match="recomputed"):
        uniform_anchors(4, 6, steps=20, seed=1, cache_dir=tmp_path)  # another seed, another file


def test_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def failing_save(handle, array):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(anchors_module.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        uniform_anchors(3, 4, steps=5, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_anchors_checks_shape_and_norm(tmp_path):
    good = uniform_anchors(3, 4, method="simplex")
    np.save(tmp_path / "good.npy", good)
    assert np.array_equal(load_anchors(tmp_path / "good.npy", 3, 4), good)
    with pytest.raises(AnchorError, match=r"shape \(3, 4\), expected \(19, 256\)"):
        load_anchors(tmp_path / "good.npy", 19, 256)
    np.save(tmp_path / "scaled.npy", 2 * good)
    with pytest.raises(AnchorError, match="not unit vectors"):
        load_anchors(tmp_path / "scaled.npy", 3, 4)
    with pytest.raises(AnchorError, match="cannot read"):
        load_anchors(tmp_path / "missing.npy", 3, 4)
