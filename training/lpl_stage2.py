"""LPL stage 2: HybridNet's pseudo masks for the unlabeled images, then one supervised retrain on
the masks plus the pseudo masks (docs/methods/lpl.md). Run after stage 1 (`train.method: lpl`):

    python -m training.lpl_stage2

Reads train.out (stage 1's HybridNet) and the split; writes the pseudo masks and their list to
train.lpl.pseudo_dir and the retrained network to train.lpl.retrain_out. A killed retrain resumes
from train.lpl.retrain_checkpoint_dir when started again.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime import files
from training import cli, params
from training.data import datasets, splits
from training.data.loaders import presence_table
from training.data.transforms import normalize
from training.deployable import DeployableError, load_deployable, save_deployable
from training.engine import CheckpointError, Trainer, resolve_device
from training.methods.losses import class_aware_labels

PSEUDO_LIST = "pseudo.txt"


@torch.no_grad()
def multi_scale_logits(model, image: torch.Tensor, scales, flip: bool) -> torch.Tensor:
    """Logits summed over rescaled (and mirrored) views, each resized back to the image.

    The reference averages them; a sum has the same argmax.
    """
    size = image.shape[-2:]
    total = torch.zeros(image.shape[0], model.num_classes, *size, device=image.device)
    for scale in scales:
        view = image if scale == 1 else F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            logits = model(view.flip(-1) if mirrored else view).float()
            logits = logits.flip(-1) if mirrored else logits
            total += F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return total


def write_pseudo_masks(model, pairs, presence: np.ndarray, out_dir: Path, scales, flip: bool,
                       device: torch.device, mean, std) -> list[tuple[str, str]]:
    """One class-aware pseudo mask PNG per image, naming only the classes of its row of `presence`
    (N,K), the images normalised with the `mean`, `std` the model records; returns (image, mask) pairs."""
    model.to(device).eval()
    written = []
    for index, (image_path, _) in enumerate(tqdm(pairs, desc="pseudo masks", leave=False)):
        image = normalize(datasets.read_image(image_path), mean, std).transpose(2, 0, 1)
        logits = multi_scale_logits(model, torch.from_numpy(np.ascontiguousarray(image))[None].to(device),
                                    scales, flip)
        present = torch.from_numpy(presence[index])[None].to(device)
        mask = class_aware_labels(logits, present)[0].to(torch.uint8).cpu().numpy()
        path = out_dir / f"{index:06d}_{Path(image_path).stem}.png"
        files.write_bytes(path, cv2.imencode(".png", mask)[1].tobytes())
        written.append((str(image_path), datasets.portable(path)))
    files.write_text(out_dir / PSEUDO_LIST, "".join(f"{i} {m}\n" for i, m in written))
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", help="stage 1's HybridNet (default: train.out)")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    parser.add_argument("--live-dir", default="dvclive/lpl_retrain")
    args = parser.parse_args(argv)

    cfg = params.load("train", args.params)
    lpl, model_cfg, eval_cfg = cfg.lpl, params.load("model", args.params), params.load("evaluate", args.params)
    data_cfg = params.load("data", args.params)
    checkpoint = args.checkpoint or cfg.out
    hybrid, meta = load_deployable(checkpoint)
    if meta["method"] != "lpl":
        raise DeployableError(f"{checkpoint} was trained with {meta['method']}; stage 2 takes stage 1's HybridNet: "
                              "run `python -m training.train` with train.method: lpl first")
    manifest = datasets.read_manifest(args.manifest)
    info = datasets.dataset_info(manifest["dataset"])
    labeled = datasets.read_pairs_file(f"{args.splits}/labeled.txt")
    unlabeled = datasets.read_pairs_file(f"{args.splits}/unlabeled.txt")
    image_classes = splits.read_image_classes(f"{args.splits}/{splits.IMAGE_CLASSES_FILE}", info.num_classes)
    presence = presence_table(unlabeled, image_classes)

    device = resolve_device(cfg.device)
    pseudo = write_pseudo_masks(hybrid, unlabeled, presence, Path(lpl.pseudo_dir), lpl.pseudo_scales,
                                lpl.pseudo_flip, device, meta["mean"], meta["std"])
    retrain = dataclasses.replace(cfg, method="supervised", iters=lpl.retrain_iters, lr=lpl.retrain_lr,
                                  out=lpl.retrain_out, checkpoint_dir=lpl.retrain_checkpoint_dir)
    trainer = Trainer(retrain, model_cfg, manifest, labeled + pseudo, [], manifest["val"], args.live_dir,
                      tuple(eval_cfg.crop), eval_cfg.mode, mean=data_cfg.mean, std=data_cfg.std)
    trainer.fit()
    if trainer.dist.is_main:
        save_deployable(lpl.retrain_out, trainer.method.evaluated_network(), classes=info.classes,
                        palette=info.palette, mean=data_cfg.mean, std=data_cfg.std, dataset=manifest["dataset"],
                        method="lpl", iteration=lpl.retrain_iters)
        print(f"lpl stage 2: {len(pseudo)} pseudo masks -> {lpl.pseudo_dir}; "
              f"{lpl.retrain_iters} iterations -> {lpl.retrain_out}")


if __name__ == "__main__":
    cli.run(main, CheckpointError, DeployableError)
