"""A tiny random Cityscapes-layout dataset for loop tests (independent of the synthetic generator)."""
from __future__ import annotations

import cv2
import numpy as np

from training.data import datasets
from training.data.cityscapes import train_ids_to_label_ids


def make_tiny_dataset(root, n_train=8, n_val=2, height=32, width=64, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "leftImg8bit" / split / "tiny").mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / "tiny").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"tiny_000000_{i:06d}"
            # blocky labels with matching colours, so a few iterations of learning are possible
            train_ids = np.kron(rng.integers(0, 19, (height // 8, width // 8)), np.ones((8, 8))).astype(np.uint8)
            image = (train_ids[..., None] * np.array([13, 7, 3]) % 255).astype(np.uint8)
            image = cv2.add(image, rng.integers(0, 20, image.shape, dtype=np.uint8))
            cv2.imwrite(str(root / "leftImg8bit" / split / "tiny" / f"{stem}_leftImg8bit.png"), image)
            cv2.imwrite(str(root / "gtFine" / split / "tiny" / f"{stem}_gtFine_labelIds.png"),
                        train_ids_to_label_ids(train_ids))
    train = datasets.list_pairs(root, "train")
    val = datasets.list_pairs(root, "val")
    manifest = {"dataset": "cityscapes", "root": str(root),
                "train": [[str(i), str(l)] for i, l in train], "val": [[str(i), str(l)] for i, l in val]}
    return manifest


def make_tiny_voc(root, n_train=8, n_val=2, seed=0):
    """A tiny random VOC-layout dataset (JPEGImages, SegmentationClassAug, ImageSets lists): 21
    classes, 255 on object borders, and images of different sizes, as VOC's are."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, n in (("train_aug", n_train), ("val", n_val)):
        names = [f"2007_{split[:1]}{i:05d}" for i in range(n)]
        for i, name in enumerate(names):
            height, width = (48, 64) if i % 2 == 0 else (64, 48)
            labels = np.kron(rng.integers(0, 21, (height // 8, width // 8)), np.ones((8, 8))).astype(np.uint8)
            labels[:, ::8] = 255
            image = cv2.add((labels[..., None] * np.array([11, 5, 3]) % 255).astype(np.uint8),
                            rng.integers(0, 20, (height, width, 3), dtype=np.uint8))
            cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), image)
            cv2.imwrite(str(root / "SegmentationClassAug" / f"{name}.png"), labels)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
