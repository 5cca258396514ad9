"""One row of the semi-supervised benchmark (docs/ssl_benchmark.md), the DVC stage `ssl_run@<arm>-<seed>`:

    python -m training.ssl_benchmark --arm stpg --seed 1     # -> metrics/ssl/stpg-1.json

A row first warms a backbone up with supervised training on the labeled images (the stand-in for the
ImageNet weights this machine cannot download; the rows of one seed share it through its checkpoint),
then trains its arm from that backbone and evaluates the arm's evaluated network on the val set. Every
stage resumes from its checkpoints when it is started again. The arm `lpl_stage2` is LPL's stage 2:
the lpl row of its seed (trained first if it is not finished) writes pseudo masks, then a supervised
row trains on them and the labels.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch

from runtime import files, scoring
from training import cli, params
from training.data import datasets
from training.data.loaders import presence_table
from training.deployable import save_atomic
from training.device import precision_name
from training.engine import CheckpointError, Trainer, digest, short_digest
from training.evaluate import evaluate_model
from training.lpl_stage2 import PSEUDO_LIST, write_pseudo_masks
from training.train import image_classes_for

CHECKPOINTS = Path("checkpoints/ssl")


def _warm_backbone(raw: dict, ssl, seed: int, model_cfg, data_cfg, manifest, labeled) -> tuple[Path, dict, list[float]]:
    """Supervised training on the labeled images only; its backbone (never its head) starts every arm."""
    folder = CHECKPOINTS / f"warmup-{seed}"
    cfg = dataclasses.replace(params.ssl_train_params(raw, params.BASELINE_ARM, seed), iters=ssl.warmup_iters,
                              checkpoint_dir=str(folder))
    trainer = Trainer(cfg, model_cfg, manifest, labeled, [], None, live_dir=None,
                      data_params=dataclasses.asdict(ssl.data), mean=data_cfg.mean, std=data_cfg.std)
    trainer.fit()  # a finished warm-up is loaded from its checkpoint, not trained again
    path = folder / "backbone.pt"
    save_atomic({"state_dict": trainer.method.evaluated_network().backbone.state_dict()}, path)
    return path, {**trainer.identity, "iters": cfg.iters}, trainer.iteration_seconds


@dataclasses.dataclass
class Row:
    """A row's trainer, not yet fitted, with what its metrics need."""
    trainer: Trainer
    ssl: params.SslBenchmarkParams
    manifest: dict
    warmup_timed: list[float]  # empty where the warm-up's checkpoint predates timing in checkpoints
    extra_metrics: dict = dataclasses.field(default_factory=dict)  # what only this arm measures


def build_row(arm: str, seed: int, params_path: str, pseudo_labeled=None, extra_identity: dict | None = None) -> Row:
    """The row's trainer (after its warm-up), as `ssl_run@<arm>-<seed>` trains it.

    `pseudo_labeled` pairs (LPL's pseudo masks) label the unlabeled images, which join the labeled
    ones; `extra_identity` adds what else defines the run to its checkpoints' identity.
    """
    raw = params.load_raw(params_path)
    ssl = params.load("ssl_benchmark", params_path)
    if arm not in ssl.arms or seed not in ssl.seeds:
        raise params.ParamsError(f"params: arm {arm!r} seed {seed} is not in ssl_benchmark.arms x seeds "
                                 f"({', '.join(ssl.arms)} x {ssl.seeds}); add it there first")
    model_cfg, data_cfg = params.load("model", params_path), params.load("data", params_path)
    prepared, splits_dir = ssl.data_dirs
    manifest = datasets.read_manifest(prepared / "manifest.json")
    labeled = datasets.read_pairs_file(splits_dir / "labeled.txt")
    unlabeled = datasets.read_pairs_file(splits_dir / "unlabeled.txt")
    identity = {"data": dataclasses.asdict(ssl.data), **(extra_identity or {})}

    warmup_timed: list[float] = []
    if ssl.warmup_iters:
        backbone, identity["warmup"], warmup_timed = _warm_backbone(raw, ssl, seed, model_cfg, data_cfg, manifest, labeled)
        model_cfg = dataclasses.replace(model_cfg, pretrained=str(backbone))

    cfg = dataclasses.replace(params.ssl_train_params(raw, arm, seed),
                              checkpoint_dir=str(CHECKPOINTS / f"{arm}-{seed}"))
    if params.split_arm(arm)[0] == params.FULL_ARM:
        labeled, unlabeled = [tuple(p) for p in manifest["train"]], []
    elif pseudo_labeled is not None:
        labeled, unlabeled = labeled + list(pseudo_labeled), []
    trainer = Trainer(cfg, model_cfg, manifest, labeled, unlabeled, None,
                      live_dir=f"dvclive/ssl/{arm}-{seed}",
                      image_classes=image_classes_for(cfg.method, splits_dir, manifest), data_params=identity,
                      mean=data_cfg.mean, std=data_cfg.std)
    return Row(trainer, ssl, manifest, warmup_timed)


def _pseudo_masks(seed: int, params_path: str) -> tuple[list[tuple[str, str]], str, dict]:
    """Stage 1's class-aware pseudo masks of the unlabeled images, the digest of their contents, and
    what they cost and score, written once per stage 1 (the row lpl-<seed>, trained first where it is
    not finished)."""
    stage1 = build_row("lpl", seed, params_path).trainer
    stage1.fit()  # a finished row loads its last checkpoint and trains nothing
    folder = CHECKPOINTS / f"{params.LPL_STAGE2_ARM}-{seed}" / "pseudo"
    made_by, stage1_digest = folder / "stage1.sha256", digest(stage1.identity)
    timed = folder / "seconds"
    # written last, the digest of the stage 1 that labeled them marks a finished set of its masks
    if not (made_by.exists() and made_by.read_text() == stage1_digest):
        lpl, started = stage1.cfg.lpl, time.perf_counter()
        write_pseudo_masks(stage1.method.evaluated_network(), stage1.unlabeled,
                           presence_table(stage1.unlabeled, stage1.image_classes), folder, lpl.pseudo_scales,
                           lpl.pseudo_flip, stage1.device, stage1.mean, stage1.std)
        files.write_text(timed, f"{time.perf_counter() - started:.1f}")
        files.write_text(made_by, stage1_digest)
    pseudo = datasets.read_pairs_file(folder / PSEUDO_LIST)
    # the masks against the unlabeled images' ground truth, which no arm trains on: how good the
    # labels the retrain learns from are
    confusion = sum(scoring.confusion_matrix(datasets.read_label(truth), datasets.read_label(mask), stage1.info.num_classes)
                    for (_, truth), (_, mask) in zip(stage1.unlabeled, pseudo))
    measured = {"pseudo_mask_miou": round(scoring.mean_iou(confusion), 6),
                "pseudo_mask_seconds": float(timed.read_text()) if timed.exists() else None}  # None: masks from before timing
    return pseudo, short_digest(b"".join(Path(mask).read_bytes() for _, mask in pseudo)), measured


def lpl_stage2_row(seed: int, params_path: str) -> Row:
    """LPL's stage 2 as a row: a supervised row on the labels plus stage 1's pseudo masks, with every
    row's schedule and warm-up backbone."""
    pseudo, masks_digest, measured = _pseudo_masks(seed, params_path)
    row = build_row(params.LPL_STAGE2_ARM, seed, params_path, pseudo_labeled=pseudo, extra_identity={"pseudo_masks": masks_digest})
    return dataclasses.replace(row, extra_metrics=measured)


def run_row(arm: str, seed: int, params_path: str) -> dict:
    built = lpl_stage2_row(seed, params_path) if arm == params.LPL_STAGE2_ARM else build_row(arm, seed, params_path)
    trainer, ssl, manifest, cfg = built.trainer, built.ssl, built.manifest, built.trainer.cfg
    history = trainer.fit()
    # every iteration the row trained, over all the processes that resumed it (a checkpoint keeps the
    # times), so pauses between processes and checkpoint writes do not count
    timed, warmup_timed = trainer.iteration_seconds, built.warmup_timed

    started = time.perf_counter()
    result = evaluate_model(trainer.method.evaluated_network(), manifest["val"], trainer.info.num_classes,
                            ssl.eval_mode, (ssl.data.height, ssl.data.width), trainer.device, trainer.autocast_dtype,
                            mean=trainer.mean, std=trainer.std)
    row = {
        "arm": arm, "method": "lpl" if arm == params.LPL_STAGE2_ARM else cfg.method, "seed": seed,
        "miou": round(result["miou"], 6),
        "per_class_iou": {name: None if v != v else round(float(v), 6)
                          for name, v in zip(trainer.info.classes, result["per_class_iou"])},
        "num_labeled": len(trainer.labeled), "num_unlabeled": len(trainer.unlabeled), "iters": cfg.iters,
        "precision": precision_name(trainer.autocast_dtype),
        "seconds_per_iteration": round(statistics.median(timed), 4) if timed else None,
        "iterations_timed": len(timed), "train_seconds": round(sum(timed), 1),
        "warmup_seconds": round(sum(warmup_timed), 1) if warmup_timed else None,
        **built.extra_metrics,
        "eval_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "final_losses": {k.removeprefix("train/"): round(v, 5) for k, v in history.items()},
        "params": {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(trainer.model_cfg),
                   "ssl_benchmark": {k: v for k, v in dataclasses.asdict(ssl).items() if k not in ("arms", "seeds")}},
    }
    files.write_json(params.SSL_ROWS_DIR / f"{arm}-{seed}.json", row)
    print(f"ssl benchmark {arm} seed {seed}: mIoU {100 * result['miou']:.2f} -> {params.SSL_ROWS_DIR / f'{arm}-{seed}.json'}")
    return row


def row_parser(description: str) -> argparse.ArgumentParser:
    """The command line that names one row: --arm, --seed and the params file."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--arm", required=True, help="one of ssl_benchmark.arms")
    parser.add_argument("--seed", type=int, required=True, help="one of ssl_benchmark.seeds")
    return parser


def main(argv=None) -> None:
    args = row_parser(__doc__).parse_args(argv)
    run_row(args.arm, args.seed, args.params)


if __name__ == "__main__":
    cli.run(main, CheckpointError)
