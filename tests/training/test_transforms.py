import numpy as np
import pytest

from training.data import transforms


def test_box_sizes_t11():
    assert transforms.box_size(100, 100, 0.3, 0.5) == (32, 32)
    assert transforms.box_size(800, 800, 0.45, 0.2) == (394, 244)


class FixedDraws:
    """Feeds box_mask the uniform draws we choose, in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def uniform(self, low=0.0, high=1.0):
        return low + (high - low) * self.draws.pop(0)


def test_overlapping_boxes_xor_t11():
    # two 32x32 boxes (p=0.3 -> prop draw (0.3-0.25)/0.25 = 0.2, v=0.5): at (0,0) and at (16,16)
    rng = FixedDraws([0.2, 0.5, 0.0, 0.0, 0.2, 0.5, 16 / 68, 16 / 68])
    mask = transforms.box_mask(100, 100, rng, n_boxes=2)
    assert mask[0, 0] == 1 and mask[40, 40] == 1
    assert mask[20, 20] == 0  # in both boxes: toggled twice
    assert mask.sum() == 2 * 32 * 32 - 2 * 16 * 16


def test_box_mask_area_in_range():
    rng = np.random.default_rng(0)
    mask = transforms.box_mask(64, 64, rng, n_boxes=1)
    assert 0.25 / 3 * 0.8 < mask.mean() < 0.5 / 3 * 1.2


def test_even_padding_puts_odd_pixel_after():
    assert transforms.even_padding(5, 8) == (1, 2)
    assert transforms.even_padding(9, 8) == (0, 0)


def test_pad_and_crop_pads_with_zero_and_ignore():
    image = np.ones((2, 3, 3), np.float32)
    label = np.zeros((2, 3), np.uint8)
    out, lab = transforms.pad_and_crop(image, label, (4, 4), np.random.default_rng(0))
    assert out.shape == (4, 4, 3) and lab.shape == (4, 4)
    # rows: 1 before, 1 after; cols: 0 before, 1 after
    np.testing.assert_array_equal(lab[:, 3], 255)
    np.testing.assert_array_equal(lab[0], 255)
    np.testing.assert_array_equal(lab[1, :3], 0)
    assert out[0].sum() == 0 and out[1, :3].min() == 1


def test_normalize_values():
    px = np.array([[[255, 0, 128]]], np.uint8)
    out = transforms.normalize(px, mean=(0.485, 0.5, 0.406), std=(0.229, 0.25, 0.225))
    expected = [(1 - 0.485) / 0.229, (0 - 0.5) / 0.25, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_weak_augment_keeps_image_and_label_aligned(seed):
    # label = column index parity pattern painted identically into the image's red channel
    h, w = 40, 60
    label = (np.arange(w)[None, :].repeat(h, 0) // 10 % 3).astype(np.uint8)
    image = np.stack([label * 100, np.zeros_like(label), np.zeros_like(label)], axis=-1).astype(np.uint8)
    out, lab = transforms.weak_augment(image, label, (32, 32), np.random.default_rng(seed), scales=(0.5, 1.0, 2.0),
                                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert out.shape == (3, 32, 32) and lab.shape == (32, 32)
    red = out[0] * 0.229 + 0.485  # back to 0..1
    valid = lab != 255
    # away from class borders (bilinear blends there), colour encodes the label exactly
    interior = valid & (np.abs(red - lab * 100 / 255) < 0.02)
    assert interior.sum() > 0.6 * valid.sum()
