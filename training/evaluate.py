"""Evaluation (docs/methods/stpg.md §8): sliding-window or whole-image inference,
confusion matrix, per-class IoU and mIoU; the `evaluate` / `evaluate_baseline` DVC stages. A model
is evaluated on images normalised with the mean and std it records, as the runtime feeds it."""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime import files
from runtime.scoring import confusion_matrix, iou_per_class, mean_iou
from training import cli, params
from training.data import datasets
from training.data.loaders import EvalDataset
from training.deployable import DeployableError, load_deployable
from training.device import resolve_device


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """0, s, 2s, ... with the last window shifted to end at the border."""
    if length <= crop:
        return [0]
    return list(range(0, length - crop, stride)) + [length - crop]


def _centre_pad(image: torch.Tensor, height: int, width: int):
    pad_h, pad_w = max(height - image.shape[-2], 0), max(width - image.shape[-1], 0)
    top, left = pad_h // 2, pad_w // 2
    return F.pad(image, (left, pad_w - left, top, pad_h - top)), top, left


@torch.no_grad()
def sliding_window_logits(model, image: torch.Tensor, crop, num_classes: int) -> torch.Tensor:
    """Summed window logits (argmax-equivalent to averaging), windows of `crop`, stride ceil(2c/3)."""
    ch, cw = crop
    height, width = image.shape[-2:]
    padded, top, left = _centre_pad(image, ch, cw)
    ph, pw = padded.shape[-2:]
    logits = padded.new_zeros((image.shape[0], num_classes, ph, pw), dtype=torch.float32)
    for y in window_starts(ph, ch, math.ceil(ch * 2 / 3)):
        for x in window_starts(pw, cw, math.ceil(cw * 2 / 3)):
            logits[..., y:y + ch, x:x + cw] += model(padded[..., y:y + ch, x:x + cw]).float()
    return logits[..., top:top + height, left:left + width]


@torch.no_grad()
def whole_image_logits(model, image: torch.Tensor, crop=None, num_classes=None) -> torch.Tensor:
    return model(image).float()


def iou_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-class IoU (NaN for classes absent from both GT and prediction), mIoU, pixel accuracy."""
    total = confusion.sum()
    pixel_acc = float(np.trace(confusion) / total) if total else float("nan")
    return iou_per_class(confusion), mean_iou(confusion), pixel_acc


@torch.no_grad()
def evaluate_model(model, pairs, num_classes: int, mode: str = "sliding", crop=(512, 1024),
                   device: str | torch.device = "cpu", autocast_dtype=None, progress: bool = False,
                   *, mean, std) -> dict:
    device = torch.device(device)
    infer = sliding_window_logits if mode == "sliding" else whole_image_logits
    was_training = model.training
    model.eval()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loader = torch.utils.data.DataLoader(EvalDataset(pairs, mean, std), batch_size=1, num_workers=0)
    for item in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        image = item["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = infer(model, image, crop, num_classes)
        confusion += confusion_matrix(item["label"].numpy(), logits.argmax(1).cpu().numpy(), num_classes)
    model.train(was_training)
    iou, miou, accuracy = iou_from_confusion(confusion)
    return {"miou": miou, "pixel_acc": accuracy, "per_class_iou": iou, "confusion": confusion}


def _finite(value: float):
    return None if not np.isfinite(value) else round(float(value), 6)


def write_results(result: dict, classes, metrics_path=None, plot_path=None) -> None:
    """mIoU and pixel accuracy (fractions) to `metrics_path`, per-class IoU to the `plot_path` CSV;
    a file not named is not written."""
    if metrics_path is not None:
        files.write_json(metrics_path, {"miou": _finite(result["miou"]), "pixel_acc": _finite(result["pixel_acc"])})
    if plot_path is not None:
        rows = [f"{name},{0.0 if not np.isfinite(v) else round(float(v), 6)}\n"
                for name, v in zip(classes, result["per_class_iou"])]
        files.write_text(plot_path, "class,iou\n" + "".join(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", default="models/gen_student.pt")
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    # Nothing is written unless named: the tracked metrics/eval.json belongs to the `evaluate` stage.
    parser.add_argument("--metrics", help="write mIoU and pixel accuracy here (JSON)")
    parser.add_argument("--plot", help="write the per-class IoU here (CSV)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: train.device)")
    args = parser.parse_args(argv)
    cfg = params.load("evaluate", args.params)
    device = resolve_device(args.device or params.load("train", args.params).device)
    model, info = load_deployable(args.checkpoint)
    model.to(device)
    pairs = datasets.read_manifest(args.manifest)["val"]
    result = evaluate_model(model, pairs, len(info["classes"]), cfg.mode, tuple(cfg.crop), device, progress=True,
                            mean=info["mean"], std=info["std"])
    write_results(result, info["classes"], args.metrics, args.plot)
    print(f"{info['method']} ({args.checkpoint}): mIoU {100 * result['miou']:.2f} %, pixel accuracy "
          f"{100 * result['pixel_acc']:.2f} % on {len(pairs)} val images")


if __name__ == "__main__":
    cli.run(main, DeployableError)
