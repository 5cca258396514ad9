"""The JSON beside a TensorRT engine: what built it, for which GPU, and the model contract.

A serialized engine runs only on the TensorRT version and GPU it was built with; loading it
elsewhere fails deep inside TensorRT or, worse, misbehaves. The sidecar lets the runtime refuse
it up front with a message that says how to rebuild.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from runtime import files
from runtime.contract import ModelContract
from runtime.engines.base import EngineError

SIDECAR_FORMAT = "stpg-drive/engine-sidecar/1"


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


@dataclasses.dataclass(frozen=True)
class EngineSidecar:
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    contract: ModelContract
    build: dict = dataclasses.field(default_factory=dict)  # how it was built (mode, source, workspace...)

    def to_json(self) -> dict:
        return {
            "format": SIDECAR_FORMAT,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": list(self.compute_capability),
            "precision": self.precision,
            "build": self.build,
            "contract": self.contract.to_metadata(),
        }

    @classmethod
    def from_json(cls, payload: dict, source: str) -> "EngineSidecar":
        if not isinstance(payload, dict) or payload.get("format") != SIDECAR_FORMAT:
            raise EngineError(f"{source} is not an engine sidecar of this project; rebuild the engine "
                              "with `python -m export.run`")
        try:
            return cls(
                tensorrt_version=str(payload["tensorrt_version"]),
                gpu_name=str(payload["gpu_name"]),
                compute_capability=tuple(int(v) for v in payload["compute_capability"]),
                precision=str(payload["precision"]),
                contract=ModelContract.from_metadata(payload["contract"], source=source),
                build=dict(payload.get("build", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"{source} is incomplete ({exc.__class__.__name__}: {exc}); rebuild the engine "
                              "with `python -m export.run`") from None


def write_sidecar(engine_path: str | Path, sidecar: EngineSidecar) -> Path:
    path = sidecar_path(engine_path)
    files.write_json(path, sidecar.to_json(), sort_keys=True)
    return path


def read_sidecar(engine_path: str | Path) -> EngineSidecar:
    path = sidecar_path(engine_path)
    if not path.exists():
        raise EngineError(f"{engine_path} has no sidecar {path.name}; the engine cannot be checked against this "
                          "TensorRT and GPU, rebuild it with `python -m export.run`")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise EngineError(f"{path} is not valid JSON; rebuild the engine with `python -m export.run`") from None
    return EngineSidecar.from_json(payload, source=str(path))


def check_compatible(sidecar: EngineSidecar, *, tensorrt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int] | None = None, source: str = "engine") -> None:
    """Refuse an engine built by another TensorRT version or for another GPU."""
    if sidecar.tensorrt_version != tensorrt_version:
        raise EngineError(
            f"{source} was built with TensorRT {sidecar.tensorrt_version}, this machine has {tensorrt_version}; "
            "rebuild it here with `python -m export.run` (or run the .onnx artefact)")
    if sidecar.gpu_name != gpu_name:
        raise EngineError(
            f"{source} was built for {sidecar.gpu_name}, this machine has {gpu_name}; "
            "rebuild it here with `python -m export.run` (or run the .onnx artefact)")
    if compute_capability is not None and tuple(sidecar.compute_capability) != tuple(compute_capability):
        raise EngineError(
            f"{source} was built for compute capability {'.'.join(map(str, sidecar.compute_capability))}, "
            f"this GPU has {'.'.join(map(str, compute_capability))}; rebuild it here with `python -m export.run`")
