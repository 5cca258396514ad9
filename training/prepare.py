"""DVC stage `prepare`: make (synthetic) or check (Cityscapes / VOC) the dataset, write its manifest
and the demo clip that `segment_demo` and `benchmark` run on.

The manifest lists the train and val (image, label) pairs, so every later stage reads one file
whatever the dataset. `demo.json` names the clip: the synthetic set's dashcam video, or, for a
dataset without video, its first `data.demo_frames` val images copied to an image folder
(`val_frames/<index>.<ext>`) with their train-id labels (`val_frames_labels/<index>.png`), the
layout `segment.py --source DIR --gt-labels DIR` reads.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import cv2

from runtime import files
from training import cli, params
from training.data import datasets

OUT_DIR = Path("data/prepared")


def write_val_frames(val: list[tuple[Path, Path]], count: int, out_dir: Path) -> dict:
    """The first `count` val pairs as numbered frames and train-id labels, all or nothing."""
    frames_dir, labels_dir = out_dir / "val_frames", out_dir / "val_frames_labels"
    staging = Path(tempfile.mkdtemp(prefix="val_frames.tmp-", dir=out_dir))
    try:
        (staging / "frames").mkdir()
        (staging / "labels").mkdir()
        for index, (image, label) in enumerate(val[:count]):
            shutil.copyfile(image, staging / "frames" / f"{index:06d}{Path(image).suffix.lower()}")
            if not cv2.imwrite(str(staging / "labels" / f"{index:06d}.png"), datasets.read_label(label)):
                raise OSError(f"cannot write the label of val image {image} under {out_dir}")
        files.replace_dir(staging / "frames", frames_dir)
        files.replace_dir(staging / "labels", labels_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"source": datasets.portable(frames_dir), "gt_labels": datasets.portable(labels_dir),
            "kind": "val_frames", "frames": min(count, len(val))}


def demo_clip(cfg: params.DataParams, root: Path, val: list[tuple[Path, Path]], out_dir: Path) -> dict:
    """The clip the runtime stages run on: the synthetic dashcam video, or the val images as frames."""
    if cfg.dataset != "synthetic":
        return write_val_frames(val, cfg.demo_frames, out_dir)
    for stale in ("val_frames", "val_frames_labels"):  # from an earlier run on another dataset
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    video = root / "video"
    return {"source": datasets.portable(video / "dashcam.mp4"), "gt_labels": datasets.portable(video / "labels"),
            "kind": "video", "frames": cfg.synthetic.video_frames}


def prepare(cfg: params.DataParams, out_dir: Path = OUT_DIR, *, demo: bool = True) -> tuple[int, int, Path]:
    """Make or check the dataset of `cfg`, write `out_dir`/manifest.json and (with `demo`) demo.json;
    (train, val) counts and root."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dataset == "synthetic":
        from training.data import synthetic

        root = out_dir / "synthetic"
        synthetic.write_dataset(root, cfg.synthetic)
    else:
        if not cfg.root:
            raise params.ParamsError(f"params: data.root must point at the {cfg.dataset} dataset")
        root = Path(cfg.root)
    train = datasets.list_pairs(root, "train", cfg.dataset)
    val = datasets.list_pairs(root, "val", cfg.dataset)
    datasets.write_manifest(out_dir / "manifest.json", cfg.dataset, root, train, val)
    if demo:
        files.write_json(out_dir / "demo.json", demo_clip(cfg, root, val, out_dir))
    else:
        (out_dir / "demo.json").unlink(missing_ok=True)
    return len(train), len(val), root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = params.load("data", args.params)
    num_train, num_val, root = prepare(cfg)
    print(f"prepared {cfg.dataset}: {num_train} train, {num_val} val images under {root}")

if __name__ == "__main__":
    cli.run(main)
