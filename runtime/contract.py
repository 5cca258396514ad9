"""The model contract: what an exported artefact tells the runtime about itself.

Export writes it into the ONNX `metadata_props` (and into the sidecar JSON of a TensorRT
engine); every engine reads it back from there, so nothing is duplicated by hand.
"""
from __future__ import annotations

import dataclasses
import json
import math

CONTRACT_VERSION = "1"
INPUT_LAYOUTS = ("nchw_float", "nhwc_uint8")
OUTPUT_KINDS = ("logits", "lowres_logits", "labels")
PRECISIONS = ("fp32", "fp16", "int8")


class ContractError(ValueError):
    """The artefact does not carry a usable model contract."""


@dataclasses.dataclass(frozen=True)
class ModelContract:
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB, one per class
    mean: tuple[float, float, float]  # RGB, on the 0..1 scale
    std: tuple[float, float, float]
    input_size: tuple[int, int]  # (height, width) the network takes
    input_layout: str  # nchw_float: normalised RGB float; nhwc_uint8: raw RGB bytes, normalised in-graph
    output_kind: str  # logits (N,K,H,W) | lowres_logits (N,K,H/4,W/4) | labels (N,H,W)
    precision: str = "fp32"
    dataset: str = ""
    checkpoint_sha256: str = ""
    project_version: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __post_init__(self):
        if self.input_layout not in INPUT_LAYOUTS:
            raise ContractError(f"model contract: input_layout {self.input_layout!r} is not one of {INPUT_LAYOUTS}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ContractError(f"model contract: output_kind {self.output_kind!r} is not one of {OUTPUT_KINDS}")
        if self.precision not in PRECISIONS:
            raise ContractError(f"model contract: precision {self.precision!r} is not one of {PRECISIONS}")
        if len(self.palette) != len(self.classes):
            raise ContractError(
                f"model contract: {len(self.palette)} palette colours for {len(self.classes)} classes")

    def to_metadata(self) -> dict[str, str]:
        """Flat string map, as ONNX metadata_props and engine sidecars store it."""
        meta = {"stpg.contract_version": CONTRACT_VERSION}
        for field in dataclasses.fields(self):
            meta[f"stpg.{field.name}"] = json.dumps(getattr(self, field.name))
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "artefact") -> "ModelContract":
        version = meta.get("stpg.contract_version")
        if version is None:
            raise ContractError(
                f"{source} carries no model contract (no stpg.* metadata); re-export it with `python -m export.run`")
        if version != CONTRACT_VERSION:
            raise ContractError(
                f"{source} has model contract version {version}, this runtime reads {CONTRACT_VERSION}; "
                "re-export it with this project version")
        values = {}
        for field in dataclasses.fields(cls):
            key = f"stpg.{field.name}"
            if key not in meta:
                if field.default is dataclasses.MISSING:
                    raise ContractError(f"{source}: model contract lacks {key}; re-export it")
                continue
            try:
                value = json.loads(meta[key])
            except (json.JSONDecodeError, TypeError):
                raise ContractError(f"{source}: model contract field {key} is not valid JSON; re-export it") from None
            valid, expected = _FIELD_RULES[field.name]
            if not valid(value):
                shown = meta[key] if len(meta[key]) <= 40 else meta[key][:37] + "..."
                raise ContractError(f"{source}: model contract field {key} must be {expected}, got {shown}; "
                                    "re-export it with `python -m export.run`")
            values[field.name] = value
        values["classes"] = tuple(values["classes"])
        values["palette"] = tuple(tuple(rgb) for rgb in values["palette"])
        for key in ("mean", "std"):
            values[key] = tuple(float(v) for v in values[key])
        values["input_size"] = tuple(values["input_size"])
        return cls(**values)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def _text(value) -> bool:
    return isinstance(value, str)


# What each stored field must hold (a test of its decoded JSON, and the words for the error), so
# a damaged or hand-edited contract is refused by name when the artefact opens, not mid-run.
_FIELD_RULES = {
    "classes": (lambda v: isinstance(v, list) and len(v) > 0 and all(map(_text, v)), "a non-empty list of names"),
    "palette": (lambda v: isinstance(v, list) and all(
        isinstance(rgb, list) and len(rgb) == 3 and all(_whole(c) and 0 <= c <= 255 for c in rgb) for rgb in v),
        "a list of [r, g, b] colours in 0..255"),
    "mean": (lambda v: _numbers(v, 3), "three numbers [r, g, b]"),
    "std": (lambda v: _numbers(v, 3) and min(v) > 0, "three positive numbers [r, g, b]"),
    "input_size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(s) and s > 0 for s in v),
                   "[height, width] in whole pixels above 0"),
    "input_layout": (lambda v: v in INPUT_LAYOUTS, f"one of {', '.join(INPUT_LAYOUTS)}"),
    "output_kind": (lambda v: v in OUTPUT_KINDS, f"one of {', '.join(OUTPUT_KINDS)}"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "dataset": (_text, "a string"),
    "checkpoint_sha256": (_text, "a string"),
    "project_version": (_text, "a string"),
}
