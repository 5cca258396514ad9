"""ONNX artefact -> TensorRT engine plus its sidecar, when TensorRT and a GPU are here.

Two ways to a reduced-precision engine:
- strongly typed: the network keeps the types of a precision ONNX (fp16 graph or int8 QDQ);
  the only way in TensorRT 11, and the default for TensorRT 10 too;
- builder flags (TensorRT 10 only): FP16 / INT8 flags over the fp32 ONNX, INT8 scales from an
  entropy calibrator fed the same calibration images as the int8 ONNX.
TensorRT and pycuda are imported inside the functions that need them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.onnx_export import ExportError, read_contract, with_precision
from runtime.engines.sidecar import EngineSidecar, write_sidecar
from runtime.files import atomic_output
from runtime.engines.tensorrt_engine import import_backend

STRONGLY_TYPED = "strongly_typed"
BUILDER_FLAGS = "builder_flags"


class TensorRTUnavailable(ExportError):
    """TensorRT was required but cannot run here."""


def unavailable_reason() -> str | None:
    """Why no engine can be built here, or None when TensorRT, pycuda and a GPU are present."""
    try:
        _, cuda = import_backend()
    except Exception as exc:  # noqa: BLE001 - EngineError, or a broken install raising anything
        return str(exc).split(";")[0]
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA GPU found"
    except Exception as exc:  # noqa: BLE001 - pycuda raises its own error types for a missing driver
        return f"CUDA is not usable ({exc.__class__.__name__}: {exc})"
    return None


def build_mode(tensorrt_major: int, source_precision: str, precision: str) -> str:
    """How to build a `precision` engine from an ONNX whose contract says `source_precision`."""
    if source_precision == precision:
        return STRONGLY_TYPED
    if source_precision == "fp32" and tensorrt_major <= 10:
        return BUILDER_FLAGS
    if source_precision == "fp32":
        raise ExportError(
            f"TensorRT {tensorrt_major} builds strongly typed networks only: a {precision} engine needs the "
            f"{precision} ONNX, not the fp32 one (set export.tensorrt_source: precision_onnx)")
    raise ExportError(f"cannot build a {precision} engine from a {source_precision} ONNX; use the fp32 or "
                      f"the {precision} ONNX")


def _entropy_calibrator(trt, cuda, arrays: Sequence[np.ndarray]):
    """An IInt8EntropyCalibrator2 that feeds `arrays` one at a time through one device buffer."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = [np.ascontiguousarray(array[None]) for array in arrays]
            self._next = 0
            self._device = cuda.mem_alloc(self._batches[0].nbytes)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self._next >= len(self._batches):
                return None
            cuda.memcpy_htod(self._device, self._batches[self._next])
            self._next += 1
            return [int(self._device)]

        def read_calibration_cache(self):
            # Calibrate afresh every build: a cache from an earlier checkpoint would carry stale scales.
            return None

        def write_calibration_cache(self, cache):
            return None

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str,
                 calibration: Sequence[np.ndarray] | None = None, workspace_mb: int = 2048,
                 timing_cache: str | Path | None = None, max_batch: int = 8, device: int = 0) -> EngineSidecar:
    """Build `engine_path` (and its sidecar) from `onnx_path`; returns the sidecar written."""
    trt, cuda = import_backend()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    source = read_contract(onnx_path)
    major = int(trt.__version__.split(".")[0])
    mode = build_mode(major, source.precision, precision)
    if mode == BUILDER_FLAGS and precision == "int8" and not calibration:
        raise ExportError("an int8 engine built with builder flags needs calibration images (export.calibration_images)")

    cuda.init()
    gpu = cuda.Device(device)
    context = gpu.retain_primary_context()
    context.push()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == STRONGLY_TYPED else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path.parent)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        profile = _batch_profile(builder, network, max_batch)
        if profile is not None:
            config.add_optimization_profile(profile)
        if mode == BUILDER_FLAGS:
            config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)
                config.int8_calibrator = _entropy_calibrator(trt, cuda, calibration)
                if profile is not None:
                    config.set_calibration_profile(profile)
        cache_path = Path(timing_cache) if timing_cache else None
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT failed to build a {precision} engine from {onnx_path}; see its log above")
        with atomic_output(engine_path) as tmp:
            tmp.write_bytes(bytes(serialized))
        if cache_path is not None:
            with atomic_output(cache_path) as tmp:
                tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    finally:
        context.pop()
        context.detach()

    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__, gpu_name=gpu.name(),
        compute_capability=tuple(gpu.compute_capability()), precision=precision,
        contract=with_precision(source, precision),
        build={"mode": mode, "source": onnx_path.name, "workspace_mb": int(workspace_mb),
               "calibration_images": len(calibration) if mode == BUILDER_FLAGS and calibration else 0})
    write_sidecar(engine_path, sidecar)
    return sidecar


def _batch_profile(builder, network, max_batch: int):
    """For a dynamic-batch ONNX, a profile with batch 1 as the optimum, up to `max_batch`; else None."""
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    if shape[0] != -1:
        return None
    profile = builder.create_optimization_profile()
    rest = shape[1:]
    profile.set_shape(tensor.name, (1, *rest), (1, *rest), (max_batch, *rest))
    return profile
