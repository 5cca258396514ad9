"""Labeled / unlabeled partitions of the train set (1/n labeled), optionally stratified."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.data.cityscapes import IGNORE
from training.data.datasets import DatasetError

IMAGE_CLASSES_FILE = "image_labels.json"

# Datasets whose class 0 is a background class; there ignore pixels (VOC's object borders) mark
# background present too, as LPL's reference derives its image-level labels (docs/methods/lpl.md).
BACKGROUND_CLASS = {"voc": 0}


def class_histogram(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel count per class, ignore excluded."""
    valid = label[label != IGNORE]
    return np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]


def make_split(histograms: np.ndarray, ratio: int, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Indices (labeled, unlabeled) with floor(N/ratio) labeled images.

    Stratified: the rarest classes (by number of images showing them) first get one image each
    that shows them, while the budget lasts, so the labeled part sees the long tail; the rest
    is drawn at random. Both lists come back sorted, so the files are stable for one seed.
    """
    n = len(histograms)
    n_labeled = n // ratio
    if n_labeled == 0:
        raise DatasetError(f"split.labeled_ratio {ratio}: 1/{ratio} of {n} train images is no image at all; "
                           "lower split.labeled_ratio")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    chosen: list[int] = []
    if stratify:
        present = histograms > 0
        images_per_class = present.sum(axis=0)
        for cls in np.argsort(images_per_class, kind="stable"):
            if len(chosen) == n_labeled or images_per_class[cls] == 0:
                continue
            if any(present[i, cls] for i in chosen):
                continue
            chosen.append(int(next(i for i in order if present[i, cls])))
    taken = set(chosen)
    chosen += [int(i) for i in order if i not in taken][: n_labeled - len(chosen)]
    labeled = np.sort(np.array(chosen, dtype=np.int64))
    unlabeled = np.setdiff1d(np.arange(n), labeled)
    return labeled, unlabeled


def pixel_frequency(histograms: np.ndarray) -> np.ndarray:
    total = histograms.sum()
    return histograms.sum(axis=0) / total if total else np.zeros(histograms.shape[1])


def class_presence(label: np.ndarray, num_classes: int, background: int | None = None) -> np.ndarray:
    """Image-level labels k (bool, (K,)) of a full ground-truth mask; any ignore pixel marks `background`."""
    present = class_histogram(label, num_classes) > 0
    if background is not None and (label == IGNORE).any():
        present[background] = True
    return present


def image_classes_payload(dataset: str, classes, presence: dict[str, np.ndarray]) -> dict:
    """The split stage's image-level labels: the present class ids of every train image, by image path."""
    return {"dataset": dataset, "classes": list(classes), "background": BACKGROUND_CLASS.get(dataset),
            "images": {image: np.flatnonzero(present).tolist() for image, present in presence.items()}}


def read_image_classes(path: str | Path, num_classes: int) -> dict[str, np.ndarray]:
    """{image path: multi-hot uint8 (K,)} from the split stage's image-level label file."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"image-level label file {path} not found; run `dvc repro split` (it writes it)")
    payload = json.loads(path.read_text())
    if len(payload["classes"]) != num_classes:
        raise DatasetError(f"{path} has {len(payload['classes'])} classes, the dataset {num_classes}; "
                           "re-run `dvc repro split` after `prepare`")
    table = {}
    for image, ids in payload["images"].items():
        table[image] = np.zeros(num_classes, dtype=np.uint8)
        table[image][ids] = 1
    return table
