"""DVC stages `train` (method from train.method) and `train_baseline` (supervised on the same split).

Writes the evaluated network (the Gen-Student for STPG) to train.out as a deployable model.
A killed run resumes from its last checkpoint when started again.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from training import cli, params
from training.data import datasets, splits
from training.deployable import save_deployable
from training.engine import CheckpointError, Trainer
from training.methods import method_class


def image_classes_for(method: str, splits_dir, manifest: dict) -> dict | None:
    """The split's image-level labels of every training image, for the methods that learn from them (LPL)."""
    if not method_class(method).needs_image_classes:
        return None
    return splits.read_image_classes(Path(splits_dir) / splits.IMAGE_CLASSES_FILE,
                                     datasets.dataset_info(manifest["dataset"]).num_classes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--method", help="override train.method (the baseline stage passes supervised)")
    parser.add_argument("--out", help="override train.out")
    parser.add_argument("--checkpoint-dir", help="override train.checkpoint_dir")
    parser.add_argument("--live-dir", default="dvclive/train")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    parser.add_argument("--all-labeled", action="store_true", help="every train image labeled (upper bound)")
    args = parser.parse_args(argv)

    cfg = params.load("train", args.params)
    overrides = {k: v for k, v in (("method", args.method), ("out", args.out),
                                   ("checkpoint_dir", args.checkpoint_dir)) if v}
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.check("train")
    model_cfg = params.load("model", args.params)
    eval_cfg = params.load("evaluate", args.params)
    data_cfg = params.load("data", args.params)
    manifest = datasets.read_manifest(args.manifest)
    if args.all_labeled:
        labeled, unlabeled = [tuple(p) for p in manifest["train"]], []
    else:
        labeled = datasets.read_pairs_file(f"{args.splits}/labeled.txt")
        unlabeled = datasets.read_pairs_file(f"{args.splits}/unlabeled.txt", allow_empty=True)
    trainer = Trainer(cfg, model_cfg, manifest, labeled, unlabeled, manifest["val"], args.live_dir,
                      tuple(eval_cfg.crop), eval_cfg.mode,
                      image_classes=image_classes_for(cfg.method, args.splits, manifest),
                      mean=data_cfg.mean, std=data_cfg.std)
    trainer.fit()
    if trainer.dist.is_main:
        info = trainer.info
        save_deployable(cfg.out, trainer.method.evaluated_network(), classes=info.classes, palette=info.palette,
                        mean=data_cfg.mean, std=data_cfg.std, dataset=manifest["dataset"], method=cfg.method,
                        iteration=cfg.iters)
        print(f"{cfg.method}: {cfg.iters} iterations -> {cfg.out}")


if __name__ == "__main__":
    cli.run(main, CheckpointError)
