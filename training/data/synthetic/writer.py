"""Writing the dataset in the Cityscapes layout and the dashcam video, all or nothing."""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from runtime import files
from training.data.cityscapes import train_ids_to_label_ids
from training.data.synthetic.street import generate_scene, render_video_frames
from training.params import ParamsError, SyntheticParams

CITIES = {"train": ("synthville", "pixelburg", "rasterdam"), "val": ("mockholm", "polygonia")}
_SPLIT_CODE = {"train": 0, "val": 1}
_FRAME = 19  # Cityscapes annotates the 20th frame of each snippet
_POOL_MIN = 64  # below this many images a process pool costs more than it saves


class SyntheticDataError(ParamsError):
    """Unusable synthetic-data parameters; the message names the key and the fix."""


def sample_stem(split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of image `index` of a split; independent of how many images there are."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def _check(params: SyntheticParams) -> None:
    key = "data.synthetic."
    for name in ("num_train", "num_val", "video_frames"):
        if getattr(params, name) < 1:
            raise SyntheticDataError(f"params: {key}{name} must be >= 1, got {getattr(params, name)}")
    for name, least in (("height", 32), ("width", 64)):
        value = getattr(params, name)
        if value < least or value % 2:
            raise SyntheticDataError(f"params: {key}{name} must be an even number >= {least} (video encoders need "
                                     f"even sizes), got {value}")
    if params.seed < 0:
        raise SyntheticDataError(f"params: {key}seed must be >= 0, got {params.seed}")
    if params.video_fps <= 0:
        raise SyntheticDataError(f"params: {key}video_fps must be > 0, got {params.video_fps}")


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}; check that the disk has space and the folder is writable")


def _write_sample(job: tuple[str, str, int, int, int, int]) -> None:
    root, split, index, seed, height, width = job
    rgb, train_ids = generate_scene(np.random.default_rng([seed, _SPLIT_CODE[split], index]), height, width)
    city, stem = sample_stem(split, index)
    image_dir = Path(root) / "leftImg8bit" / split / city
    label_dir = Path(root) / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    _write_png(image_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    _write_png(label_dir / f"{stem}_gtFine_labelIds.png", train_ids_to_label_ids(train_ids))


def write_dataset(root: str | Path, params: SyntheticParams) -> dict:
    """Write train and val images, labelIds and the dashcam video under `root`, all or nothing."""
    _check(params)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        jobs = [(str(staging), split, index, params.seed, params.height, params.width)
                for split, count in (("train", params.num_train), ("val", params.num_val)) for index in range(count)]
        workers = min(os.cpu_count() or 1, 4)
        if len(jobs) >= _POOL_MIN and workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_sample, jobs, chunksize=8))
        else:
            for job in jobs:
                _write_sample(job)
        write_video(staging, params)
        files.replace_dir(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"train": params.num_train, "val": params.num_val, "video_frames": params.video_frames}


def write_video(root: str | Path, params: SyntheticParams) -> Path:
    """Write <root>/video/dashcam.mp4 and its per-frame train-id PNGs under <root>/video/labels/."""
    _check(params)
    video_dir = Path(root) / "video"
    video_dir.mkdir(parents=True, exist_ok=True)
    target = video_dir / "dashcam.mp4"
    staging = Path(tempfile.mkdtemp(prefix="video.tmp-", dir=video_dir))
    try:
        labels = staging / "labels"
        labels.mkdir()
        partial = staging / "dashcam.mp4"
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), float(params.video_fps),
                                 (params.width, params.height))
        if not writer.isOpened():
            raise OSError("OpenCV cannot open an mp4v video writer; install an OpenCV build with video "
                          "support (opencv-python-headless)")
        try:
            frames = render_video_frames(params.seed, params.height, params.width, params.video_frames,
                                         params.video_fps)
            for index, (rgb, train_ids) in enumerate(frames):
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                _write_png(labels / f"{index:06d}.png", train_ids)
        finally:
            writer.release()
        files.replace_dir(labels, video_dir / "labels")
        files.publish(partial, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
