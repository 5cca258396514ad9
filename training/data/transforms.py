"""Weak augmentation and CutMix box masks (docs/methods/stpg.md §2).

Written with cv2/numpy rather than torchvision.transforms.v2: the rescale is drawn from a
discrete set and the padding must be split evenly with the mean colour, neither of which v2
offers, and uint8 cv2 resizing is the fastest path on the CPU data workers.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from training.data.cityscapes import IGNORE


def normalize(image_rgb: np.ndarray, mean, std) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 HxWx3, (x/255 - mean)/std, with data.mean / data.std (RGB)."""
    scale = np.float32(1.0 / 255.0)
    return (image_rgb.astype(np.float32) * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def even_padding(size: int, crop: int) -> tuple[int, int]:
    """Padding (before, after) that brings `size` up to `crop`; the odd pixel goes after."""
    extra = max(crop - size, 0)
    return extra // 2, extra - extra // 2


def pad_and_crop(image: np.ndarray, label: np.ndarray | None, crop_hw, rng: np.random.Generator):
    """Zero-pad (after normalisation, i.e. the mean colour) and ignore-pad, then random-crop."""
    ch, cw = crop_hw
    (top, bottom), (left, right) = even_padding(image.shape[0], ch), even_padding(image.shape[1], cw)
    if top or bottom or left or right:
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)))
        if label is not None:
            label = np.pad(label, ((top, bottom), (left, right)), constant_values=IGNORE)
    y = int(rng.integers(0, image.shape[0] - ch + 1))
    x = int(rng.integers(0, image.shape[1] - cw + 1))
    image = image[y:y + ch, x:x + cw]
    if label is not None:
        label = label[y:y + ch, x:x + cw]
    return image, label


def weak_augment(image_rgb: np.ndarray, label: np.ndarray | None, crop_hw, rng: np.random.Generator,
                 scales, mean, std):
    """Flip (p=0.5), rescale by a factor from `scales`, normalise, crop; returns CHW float32 + label."""
    if rng.random() < 0.5:
        image_rgb = image_rgb[:, ::-1]
        label = label[:, ::-1] if label is not None else None
    factor = float(scales[int(rng.integers(len(scales)))])
    if factor != 1.0:
        h, w = image_rgb.shape[:2]
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
        image_rgb = cv2.resize(np.ascontiguousarray(image_rgb), size, interpolation=cv2.INTER_LINEAR)
        if label is not None:
            label = cv2.resize(np.ascontiguousarray(label), size, interpolation=cv2.INTER_NEAREST)
    image, label = pad_and_crop(normalize(image_rgb, mean, std), label, crop_hw, rng)
    image = np.ascontiguousarray(image.transpose(2, 0, 1))
    return image, (np.ascontiguousarray(label) if label is not None else None)


def box_size(height: int, width: int, proportion: float, aspect_draw: float) -> tuple[int, int]:
    """Box of area proportion/3 of the image: fractions p^v/sqrt(3) (height) and p^(1-v)/sqrt(3) (width)."""
    h_frac = proportion ** aspect_draw / math.sqrt(3.0)
    w_frac = proportion ** (1.0 - aspect_draw) / math.sqrt(3.0)
    return int(round(h_frac * height)), int(round(w_frac * width))


def box_mask(height: int, width: int, rng: np.random.Generator, n_boxes: int = 3,
             prop_range=(0.25, 0.5)) -> np.ndarray:
    """Binary CutMix mask (1 = take the paste source); each box toggles its region (XOR)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(n_boxes):
        proportion = rng.uniform(*prop_range)
        bh, bw = box_size(height, width, proportion, rng.uniform())
        top = int(round((height - bh) * rng.uniform()))
        left = int(round((width - bw) * rng.uniform()))
        mask[top:top + bh, left:left + bw] ^= 1
    return mask
