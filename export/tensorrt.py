"""ONNX artefact -> TensorRT engine plus its sidecar, when TensorRT and a GPU are here.

Two ways to a reduced-precision engine:
- strongly typed: the network keeps the types of a precision ONNX (fp16 graph or int8 QDQ);
  the only way in TensorRT 11, and the default for TensorRT 10 too;
- builder flags (TensorRT 10 only): FP16 / INT8 flags over the fp32 ONNX, INT8 scales from an
  entropy calibrator fed the same calibration images as the int8 ONNX.
TensorRT takes symmetric signed int8 only, so the int8 ONNX made for CPUs (unsigned activations)
is refused as a source. fp32 engines are built without TF32, so "fp32" means fp32; the sidecar
records the flag. TensorRT and the CUDA library are imported inside the functions that need them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import ExportError, read_contract, with_precision
from runtime import files
from runtime.engines.sidecar import EngineSidecar, sidecar_path
from runtime.engines.tensorrt_engine import import_backend

STRONGLY_TYPED = "strongly_typed"
BUILDER_FLAGS = "builder_flags"


class TensorRTUnavailable(ExportError):
    """TensorRT was required but cannot run here."""


def unavailable_reason() -> str | None:
    """Why no engine can be built here, or None when TensorRT, a CUDA library and a GPU are present."""
    try:
        _, device = import_backend()
    except Exception as exc:  # noqa: BLE001 - EngineError, or a broken install raising anything
        return str(exc).split(";")[0]
    device.close()
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


def check_int8_source(onnx_path: Path) -> None:
    """Refuse a QDQ graph TensorRT cannot take: every QuantizeLinear needs an int8 zero point of 0
    (a missing zero point means uint8). The CPU variant quantises activations as uint8."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        signed = zero_point is not None and zero_point.data_type == onnx.TensorProto.INT8
        if not signed or np.any(onnx.numpy_helper.to_array(zero_point)):
            raise ExportError(
                f"{onnx_path} quantises {node.input[0]!r} asymmetrically or unsigned (the ONNX Runtime CPU "
                "variant); TensorRT takes symmetric int8 only: build from the TensorRT-targeted int8 ONNX "
                "(export.tensorrt_source: precision_onnx) or from the fp32 ONNX (builder_flags)")


def _entropy_calibrator(trt, device, arrays: Sequence[np.ndarray]):
    """An IInt8EntropyCalibrator2 that feeds `arrays` one at a time through one device buffer."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = [np.ascontiguousarray(array[None]) for array in arrays]
            self._next = 0
            self._buffer = device.empty(self._batches[0].shape, self._batches[0].dtype)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self._next >= len(self._batches):
                return None
            with device.current():  # TensorRT calls back from its own build, in this thread
                device.copy_to_device(self._buffer.pointer, self._batches[self._next], None)
                device.synchronize(None)
            self._next += 1
            return [self._buffer.pointer]

        def read_calibration_cache(self):
            # Calibrate afresh every build: a cache from an earlier checkpoint would carry stale scales.
            return None

        def write_calibration_cache(self, cache):
            return None

    return EntropyCalibrator()


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str,
                 calibration: Sequence[np.ndarray] | None = None, workspace_mb: int = 2048,
                 timing_cache: str | Path | None = None, max_batch: int = 8, device: int = 0) -> EngineSidecar:
    """Build `engine_path` and its sidecar from `onnx_path`, written as one unit; returns the sidecar."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    source = read_contract(onnx_path)
    if source.precision == "int8":
        check_int8_source(onnx_path)
    trt, cuda = import_backend(device)
    try:
        major = int(trt.__version__.split(".")[0])
        mode = build_mode(major, source.precision, precision)
        if mode == BUILDER_FLAGS and precision == "int8" and not calibration:
            raise ExportError("an int8 engine built with builder flags needs calibration images "
                              "(export.calibration_images)")
        cache_path = Path(timing_cache) if timing_cache else None
        with cuda.current():
            plan, cache_bytes, build = _build(trt, cuda, onnx_path, mode, precision, calibration, workspace_mb,
                                              cache_path, max_batch)
    finally:
        cuda.close()
    build.update(mode=mode, source=onnx_path.name, workspace_mb=int(workspace_mb),
                 calibration_images=len(calibration) if mode == BUILDER_FLAGS and calibration else 0)
    sidecar = EngineSidecar(tensorrt_version=trt.__version__, gpu_name=cuda.name,
                            compute_capability=cuda.compute_capability, precision=precision,
                            contract=with_precision(source, precision), build=build)
    write_engine(engine_path, plan, sidecar)
    if cache_path is not None and cache_bytes is not None:
        files.write_bytes(cache_path, cache_bytes)
    return sidecar


def _build(trt, cuda, onnx_path: Path, mode: str, precision: str, calibration, workspace_mb: int,
           cache_path: Path | None, max_batch: int) -> tuple[bytes, bytes | None, dict]:
    """(serialised engine, timing cache to save or None, build facts for the sidecar)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == STRONGLY_TYPED else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # From the file, so weights stored as external data resolve beside the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = _batch_profile(builder, network, max_batch)
    if profile is not None:
        config.add_optimization_profile(profile)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: fp32 convolutions would run as TF32
    if mode == BUILDER_FLAGS:
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16, not fp32
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _entropy_calibrator(trt, cuda, calibration)
            if profile is not None:
                config.set_calibration_profile(profile)
    timing = attach_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build a {precision} engine from {onnx_path}; see its log above")
    cache = config.get_timing_cache()
    if cache is None and cache_path is not None:
        timing = f"{timing}, not saved (TensorRT returned no cache)"
    cache_bytes = bytes(cache.serialize()) if cache is not None and cache_path is not None else None
    build = {"tf32": bool(config.get_flag(trt.BuilderFlag.TF32)), "timing_cache": timing,
             "max_batch": int(max_batch) if profile is not None else None}
    return bytes(serialized), cache_bytes, build


def attach_timing_cache(config, cache_path: Path | None) -> str:
    """Give the build a timing cache: the saved one where TensorRT accepts it, else a fresh one
    (a cache from another GPU or TensorRT version is refused, and rewritten after the build).
    Returns how the cache was set up, for the sidecar."""
    saved = cache_path.read_bytes() if cache_path is not None and cache_path.exists() else b""
    if saved:
        cache = config.create_timing_cache(saved)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "loaded"
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise ExportError("TensorRT could not set up a timing cache for the build; see its log above")
    return "replaced" if saved else "fresh"


def write_engine(engine_path: Path, plan: bytes, sidecar: EngineSidecar) -> None:
    """The engine and its sidecar as one unit. Both are written in full to temporary files; only
    then does the old sidecar go, the engine take its name and the sidecar last. A failed write
    leaves the old pair as it was; a crash between the renames leaves an engine without sidecar,
    which is refused with a rebuild hint: never an engine beside another build's sidecar."""
    sidecar_file = sidecar_path(engine_path)
    # Nested so the engine (inner) is renamed before the sidecar (outer).
    with files.atomic_output(sidecar_file) as sidecar_temp, files.atomic_output(engine_path) as engine_temp:
        engine_temp.write_bytes(plan)
        files.write_json(sidecar_temp, sidecar.to_json(), sort_keys=True)
        sidecar_file.unlink(missing_ok=True)


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
