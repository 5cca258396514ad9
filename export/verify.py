"""Parity of every artefact with the PyTorch network it came from, measured through the runtime.

Each artefact runs through `runtime.engines.open_engine` on the same validation images as the
PyTorch model; we compare raw outputs (max |delta logits|), per-pixel labels (agreement) and
the mIoU each reaches against the ground truth. The gate turns a drift beyond the tolerances
in params.yaml into an error that names the artefact, the value and the tolerance.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from export.onnx_export import ExportError
from runtime import ops
from runtime.contract import ModelContract
from runtime.engines import open_engine
from runtime.scoring import confusion_matrix, mean_iou

class ParityGateError(ExportError):
    """An artefact drifted from the PyTorch model beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Sample:
    frame_bgr: np.ndarray  # uint8 HxWx3 as a camera delivers it, any size
    label: np.ndarray  # train ids uint8 HxW, 255 = ignore


def labels_of(output: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Per-pixel labels (N, H, W) uint8 from an engine output, post-processed as the runtime does."""
    if contract.output_kind == "labels":
        return output.astype(np.uint8, copy=False)
    if contract.output_kind == "lowres_logits":
        return np.stack([ops.upsample_argmax(np.ascontiguousarray(item, dtype=np.float32), contract.input_size)
                         for item in output])
    return np.stack([ops.argmax(np.ascontiguousarray(item, dtype=np.float32)) for item in output])


def network_input(frame_bgr: np.ndarray, contract: ModelContract) -> np.ndarray:
    """One network input (no batch axis), preprocessed by the runtime's own op."""
    return ops.preprocess(frame_bgr, contract.input_size, contract.mean, contract.std, layout=contract.input_layout)


def torch_input(frame_bgr: np.ndarray, contract: ModelContract) -> np.ndarray:
    """The normalised float NCHW image (no batch axis) the artefact computes internally.

    For raw-byte artefacts that is the resized bytes normalised, not a float resize of the
    frame, so both sides start from the very same pixels.
    """
    if contract.input_layout == "nchw_float":
        return network_input(frame_bgr, contract)
    rgb = network_input(frame_bgr, contract).astype(np.float32)
    mean = np.asarray(contract.mean, dtype=np.float32)
    std = np.asarray(contract.std, dtype=np.float32)
    return np.ascontiguousarray(((rgb / 255.0 - mean) / std).transpose(2, 0, 1))


@dataclasses.dataclass
class Reference:
    """What the PyTorch model says on the validation images, computed once for all artefacts."""
    frames: list[np.ndarray]  # BGR, original size
    labels: np.ndarray  # (N, H, W) ground truth at the input size
    outputs: list[np.ndarray]  # per image, the output of the contract's kind (labels kind: None)
    predictions: np.ndarray  # (N, H, W) PyTorch labels
    miou: float
    num_classes: int


@torch.no_grad()
def torch_reference(model: torch.nn.Module, contract: ModelContract, samples: Sequence[Sample]) -> Reference:
    if not samples:
        raise ExportError("verification got no validation images; check export.verify_images and data.root")
    model = model.eval()
    height, width = contract.input_size
    labels, outputs, predictions = [], [], []
    for sample in samples:
        x = torch.from_numpy(torch_input(sample.frame_bgr, contract))[None]
        logits = model(x)
        if contract.output_kind == "lowres_logits":
            outputs.append(model.forward_lowres(x)[0].numpy())
        elif contract.output_kind == "logits":
            outputs.append(logits[0].numpy())
        else:
            outputs.append(None)
        labels.append(cv2.resize(sample.label, (width, height), interpolation=cv2.INTER_NEAREST))
        predictions.append(logits[0].argmax(0).numpy().astype(np.uint8))
    labels, predictions = np.stack(labels), np.stack(predictions)
    confusion = confusion_matrix(labels, predictions, contract.num_classes)
    if not confusion.any():
        raise ExportError("the verification images hold no labelled pixel; check the val labels and data.root")
    frames = [sample.frame_bgr for sample in samples]
    return Reference(frames, labels, outputs, predictions, mean_iou(confusion), contract.num_classes)


@dataclasses.dataclass
class ArtefactReport:
    path: str
    backend: str
    precision: str
    size_bytes: int
    max_abs_logit_delta: float | None
    label_agreement: float
    miou: float  # fraction, as every stored mIoU
    miou_torch: float
    miou_delta_points: float  # artefact minus PyTorch, in points like export.tolerance.*_miou_delta
    passed: bool | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def verify_artefact(path: str | Path, reference: Reference, *, backend: str = "auto", **engine_kwargs) -> ArtefactReport:
    """Run the artefact on the reference images and measure its drift from PyTorch."""
    path = Path(path)
    max_delta = 0.0
    predictions = []
    with open_engine(path, backend=backend, **engine_kwargs) as engine:
        contract = engine.contract
        for frame, torch_output in zip(reference.frames, reference.outputs):
            output = engine.infer(network_input(frame, contract)[None])
            if torch_output is not None:
                max_delta = max(max_delta, float(np.abs(output[0].astype(np.float32) - torch_output).max()))
            predictions.append(labels_of(output, contract)[0])
        backend_name = engine.name
    predictions = np.stack(predictions)
    miou = mean_iou(confusion_matrix(reference.labels, predictions, reference.num_classes))
    return ArtefactReport(
        path=str(path), backend=backend_name, precision=contract.precision, size_bytes=path.stat().st_size,
        max_abs_logit_delta=None if contract.output_kind == "labels" else max_delta,
        label_agreement=float(np.mean(predictions == reference.predictions)),
        miou=miou, miou_torch=reference.miou, miou_delta_points=100 * (miou - reference.miou))


def gate(report: ArtefactReport, tolerance) -> ArtefactReport:
    """Mark the report passed, or raise ParityGateError (`tolerance`: params ExportTolerance).

    The mIoU drift counts in both directions: an artefact that scores far from its source is
    broken even when the number happens to go up.
    """
    min_agreement = getattr(tolerance, f"{report.precision}_label_agreement")
    max_miou_delta = getattr(tolerance, f"{report.precision}_miou_delta")
    report.passed = False
    if report.label_agreement < min_agreement:
        raise ParityGateError(
            f"export gate failed: {report.path} agrees with PyTorch on {report.label_agreement:.4f} of pixels, "
            f"below export.tolerance.{report.precision}_label_agreement = {min_agreement}")
    if abs(report.miou_delta_points) > max_miou_delta:
        raise ParityGateError(
            f"export gate failed: {report.path} mIoU {100 * report.miou:.2f} vs PyTorch {100 * report.miou_torch:.2f} "
            f"(delta {report.miou_delta_points:+.2f} points) exceeds export.tolerance.{report.precision}_miou_delta = "
            f"{max_miou_delta}")
    report.passed = True
    return report
