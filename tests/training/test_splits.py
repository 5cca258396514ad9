import numpy as np
import pytest

from training.data import splits
from training.data.datasets import DatasetError


def hist(rows):
    return np.array(rows, dtype=np.int64)


def test_ratio_no_overlap_union_and_determinism():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 5, size=(50, 4))
    lab, unl = splits.make_split(h, 8, seed=3)
    assert len(lab) == 50 // 8
    assert not set(lab) & set(unl) and set(lab) | set(unl) == set(range(50))
    lab2, _ = splits.make_split(h, 8, seed=3)
    np.testing.assert_array_equal(lab, lab2)
    lab3, _ = splits.make_split(h, 8, seed=4)
    assert not np.array_equal(lab, lab3)


def test_stratify_takes_rare_class():
    # class 2 appears only in image 7; with stratification it must be labeled
    h = np.zeros((16, 3), np.int64)
    h[:, 0] = 10
    h[7, 2] = 1
    for seed in range(5):
        lab, _ = splits.make_split(h, 8, seed=seed, stratify=True)
        assert 7 in lab and len(lab) == 2


def test_too_few_images_is_a_clear_error():
    with pytest.raises(DatasetError, match="labeled_ratio"):
        splits.make_split(np.ones((3, 2)), 8, seed=0)


def test_histogram_ignores_255():
    label = np.array([[0, 1, 255], [1, 1, 2]], np.uint8)
    np.testing.assert_array_equal(splits.class_histogram(label, 3), [1, 3, 1])


def test_pixel_frequency():
    np.testing.assert_allclose(splits.pixel_frequency(hist([[1, 3], [2, 2]])), [3 / 8, 5 / 8])
