"""Cityscapes' 19 train classes and the official labelId -> trainId mapping.

Only the names, colours and ids the rest of the project needs; the mapping follows the
official `cityscapesscripts/helpers/labels.py` table (trainId 255 = ignore).
"""
from __future__ import annotations

import numpy as np

IGNORE = 255

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

# labelId -> trainId for the labelIds that have a train class; every other id is ignored.
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
TRAIN_TO_LABEL = {t: l for l, t in LABEL_TO_TRAIN.items()}

# Lookup table over all 256 uint8 values: one `lut[label_ids]` converts a whole image.
LABEL_TO_TRAIN_LUT = np.full(256, IGNORE, dtype=np.uint8)
for _label, _train in LABEL_TO_TRAIN.items():
    LABEL_TO_TRAIN_LUT[_label] = _train

TRAIN_TO_LABEL_LUT = np.zeros(256, dtype=np.uint8)  # ignore -> 0 ("unlabeled")
for _train, _label in TRAIN_TO_LABEL.items():
    TRAIN_TO_LABEL_LUT[_train] = _label


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return LABEL_TO_TRAIN_LUT[label_ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    return TRAIN_TO_LABEL_LUT[train_ids]
