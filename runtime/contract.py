"""The model contract: what an exported artefact tells the runtime about itself.

Export writes it into the ONNX `metadata_props` (and into the sidecar JSON of a TensorRT
engine); every engine reads it back from there, so nothing is duplicated by hand.
"""
from __future__ import annotations

import dataclasses
import json

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
                values[field.name] = json.loads(meta[key])
            except json.JSONDecodeError:
                raise ContractError(f"{source}: model contract field {key} is not valid JSON; re-export it") from None
        values["classes"] = tuple(values["classes"])
        values["palette"] = tuple(tuple(int(c) for c in rgb) for rgb in values["palette"])
        for key in ("mean", "std"):
            values[key] = tuple(float(v) for v in values[key])
        values["input_size"] = tuple(int(v) for v in values["input_size"])
        return cls(**values)
