"""Dataset readers: Cityscapes (and the synthetic set, which uses its layout) and PASCAL VOC.

A reader turns a dataset root into (image, label) path pairs and reads labels as train ids
(0..K-1, 255 = ignore), so everything downstream is dataset-agnostic. The `prepare` stage
stores the pairs in a manifest; later stages read only the manifest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime import files
from training.data import cityscapes

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def _voc_palette() -> np.ndarray:
    """The standard VOC colour map: bits of the class index spread over the RGB channels."""
    palette = np.zeros((len(VOC_CLASSES), 3), dtype=np.uint8)
    for index in range(len(VOC_CLASSES)):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


VOC_PALETTE = _voc_palette()

CITYSCAPES_LAYOUT = (
    "expected the Cityscapes layout: <root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
    "<root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png")
VOC_LAYOUT = (
    "expected the PASCAL VOC layout: <root>/JPEGImages/*.jpg, <root>/SegmentationClassAug/*.png and "
    "a list <root>/ImageSets/Segmentation/{train_aug,train,val}.txt (or <root>/{train_aug,train,val}.txt)")


class DatasetError(ValueError):
    """A missing or malformed dataset; the message names the expected layout."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    palette: np.ndarray  # (K, 3) RGB uint8

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_info(dataset: str) -> DatasetInfo:
    if dataset in ("cityscapes", "synthetic"):
        return DatasetInfo(dataset, cityscapes.CLASSES, cityscapes.PALETTE)
    if dataset == "voc":
        return DatasetInfo(dataset, VOC_CLASSES, VOC_PALETTE)
    raise DatasetError(f"unknown dataset {dataset!r}; use synthetic, cityscapes or voc")


# ---------------------------------------------------------------- reading files

def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HxWx3."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"cannot read image {path}; the file is missing or not an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """Train ids uint8 HxW. Cityscapes *_labelIds.png are mapped; trainIds / VOC PNGs are read as is."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"cannot read label {path}; the file is missing or not a PNG")
    if label.ndim != 2:
        raise DatasetError(f"label {path} has {label.shape[2]} channels; expected a single-channel id image")
    if str(path).endswith("_labelIds.png"):
        return cityscapes.label_ids_to_train_ids(label)
    return label.astype(np.uint8, copy=False)


# ---------------------------------------------------------------- listing pairs

def _cityscapes_label_for(image: Path, root: Path) -> Path:
    rel = image.relative_to(root / "leftImg8bit")
    stem = image.name[: -len("_leftImg8bit.png")]
    return root / "gtFine" / rel.parent / f"{stem}_gtFine_labelIds.png"


def _list_cityscapes(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"no images under {root / 'leftImg8bit' / split}; {CITYSCAPES_LAYOUT}")
    pairs = [(image, _cityscapes_label_for(image, root)) for image in images]
    missing = [str(label) for _, label in pairs if not label.exists()]
    if missing:
        raise DatasetError(f"{len(missing)} labels missing, e.g. {missing[0]}; {CITYSCAPES_LAYOUT}")
    return pairs


def _voc_list_file(root: Path, split: str) -> Path:
    names = ("train_aug", "train") if split == "train" else (split,)
    for name in names:
        for candidate in (root / "ImageSets" / "Segmentation" / f"{name}.txt", root / f"{name}.txt"):
            if candidate.exists():
                return candidate
    raise DatasetError(f"no {split} list found under {root}; {VOC_LAYOUT}")


def _list_voc(root: Path, split: str) -> list[tuple[Path, Path]]:
    if not (root / "JPEGImages").is_dir() or not (root / "SegmentationClassAug").is_dir():
        raise DatasetError(f"{root} is not a VOC root; {VOC_LAYOUT}")
    return read_list_file(_voc_list_file(root, split), root, "voc")


def list_pairs(root: str | Path, split: str, dataset: str = "cityscapes") -> list[tuple[Path, Path]]:
    """(image, label) paths of one split ('train' or 'val') of a dataset root."""
    root = Path(root)
    if not root.is_dir():
        layout = VOC_LAYOUT if dataset == "voc" else CITYSCAPES_LAYOUT
        raise DatasetError(f"dataset root {root} does not exist; set data.root ({layout})")
    if dataset == "voc":
        return _list_voc(root, split)
    return _list_cityscapes(root, split)


def _resolve(token: str, root: Path, candidates: tuple[str, ...]) -> Path | None:
    for prefix in ("",) + candidates:
        path = root / prefix / token.lstrip("/")
        if path.exists():
            return path
    return None


def read_list_file(path: str | Path, root: str | Path, dataset: str) -> list[tuple[Path, Path]]:
    """Pairs from a CPS/STPG-style list: per line an image path (or VOC id) and optionally a label path.

    Paths may be relative to the root or to its leftImg8bit / gtFine (Cityscapes) or
    JPEGImages / SegmentationClassAug (VOC) folders.
    """
    path, root = Path(path), Path(root)
    if not path.exists():
        raise DatasetError(f"split list {path} not found; give a list of image paths relative to {root}")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if dataset == "voc":
            image_token = tokens[0] if "." in Path(tokens[0]).name else f"{tokens[0]}.jpg"
            image = _resolve(image_token, root, ("JPEGImages",))
            label_token = tokens[1] if len(tokens) > 1 else f"{Path(image_token).stem}.png"
            label = _resolve(label_token, root, ("SegmentationClassAug",))
        else:
            image = _resolve(tokens[0], root, ("leftImg8bit",))
            label = None
            if len(tokens) > 1:
                label = _resolve(tokens[1], root, ("gtFine",))
            elif image is not None and "leftImg8bit" in image.parts:
                label = _cityscapes_label_for(image, root)
        if image is None or label is None or not label.exists():
            raise DatasetError(f"{path}:{number}: cannot find the image or label of {line.strip()!r} under {root}")
        pairs.append((image, label))
    if not pairs:
        raise DatasetError(f"split list {path} is empty; it needs one image per line")
    return pairs


# ---------------------------------------------------------------- manifest

def portable(path: Path) -> str:
    """Project-relative where possible, so a moved checkout keeps working."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def write_manifest(path: str | Path, dataset: str, root: str | Path,
                   train: list[tuple[Path, Path]], val: list[tuple[Path, Path]]) -> dict:
    info = dataset_info(dataset)
    manifest = {
        "dataset": dataset,
        "root": portable(Path(root)),
        "classes": list(info.classes),
        "palette": info.palette.tolist(),
        "train": [[portable(i), portable(l)] for i, l in train],
        "val": [[portable(i), portable(l)] for i, l in val],
    }
    files.write_json(path, manifest)
    return manifest


MANIFEST_KEYS = ("dataset", "root", "train", "val")


def read_manifest(path: str | Path = "data/prepared/manifest.json") -> dict:
    """The manifest, refused as a whole if it is damaged or names a file that is not there, so a
    stage fails before its work starts rather than at the first batch that needs the file."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset manifest {path} not found; run `dvc repro prepare` first")
    fix = "run `dvc repro prepare` (or `python -m training.prepare`) to write it again"
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DatasetError(f"dataset manifest {path} is damaged (not valid JSON); {fix}") from None
    if not isinstance(manifest, dict) or any(key not in manifest for key in MANIFEST_KEYS):
        raise DatasetError(f"dataset manifest {path} lacks some of {', '.join(MANIFEST_KEYS)}; {fix}")
    require_files(manifest["train"] + manifest["val"], f"dataset manifest {path}", fix)
    return manifest


def read_pairs_file(path: str | Path, root: str | Path | None = None,
                    allow_empty: bool = False) -> list[tuple[str, str]]:
    """Our own split files: 'image label' per line, paths as written by the split stage (or, in
    older lists, relative to the dataset `root`). An unlabeled list is empty when every image
    is labeled (`allow_empty`); the method decides whether it can train so."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"split file {path} not found; run `dvc repro split` first")
    pairs = [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]
    if not pairs and not allow_empty:
        raise DatasetError(f"split file {path} is empty; re-run `dvc repro split` with a smaller labeled_ratio")
    if any(len(pair) != 2 for pair in pairs):
        raise DatasetError(f"split file {path} has a line without a label path; re-run `dvc repro split`")
    require_files(pairs, f"split file {path}", "re-run `dvc repro split` (after `dvc repro prepare` if the "
                  "dataset moved)", root)
    return pairs


def require_files(pairs, listed_in: str, fix: str, root: str | Path | None = None) -> None:
    """Refuse a list of (image, label) paths naming a file that is not there."""
    def present(name: str) -> bool:
        return Path(name).is_file() or (root is not None and (Path(root) / name).is_file())

    missing = [name for pair in pairs for name in pair if not present(name)]
    if missing:
        raise DatasetError(f"{listed_in} names {len(missing)} files that do not exist (first: {missing[0]}); {fix}")
