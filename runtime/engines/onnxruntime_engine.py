"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, whichever this machine has."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.contract import ModelContract
from runtime.engines import check_batch, check_graph_shapes
from runtime.engines.base import Engine, EngineError, check_io_dtypes

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERENCE = (TENSORRT_EP, CUDA_EP, CPU_EP)
ALIASES = {"tensorrt": TENSORRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
GPU_PROVIDERS = (TENSORRT_EP, CUDA_EP)
# ONNX Runtime's tensor type names; others (bfloat16, float8...) have no numpy dtype.
TENSOR_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
                "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
                "tensor(bool)": np.bool_}


def default_trt_cache_dir() -> Path:
    """Per-user cache for the TensorRT provider's engines, kept out of the artefact folder
    (which DVC owns); the provider keys its entries by model hash, so artefacts can share it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stpg-drive" / "onnxruntime-tensorrt"


def choose_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Providers in preference order. 'auto': the best available, down to CPU.

    A named provider (alias or full name) must be available; CPU is appended as the fallback
    ONNX Runtime uses for ops a GPU provider does not take.
    """
    if requested == "auto":
        return [p for p in PREFERENCE if p in available]
    names = [requested] if isinstance(requested, str) else list(requested)
    chosen = []
    for name in names:
        provider = ALIASES.get(name, name)
        if provider not in available:
            raise EngineError(
                f"ONNX Runtime provider {name!r} is not available here (available: {', '.join(available)}); "
                "use providers='auto' or install onnxruntime-gpu")
        chosen.append(provider)
    if CPU_EP not in chosen:
        chosen.append(CPU_EP)
    return chosen


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: str | Sequence[str] = "auto", threads: int | None = None,
                 trt_cache_dir: str | Path | None = None, device: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: on a vehicle's few cores a spinning pool steals
        # the cores that decode and the C ops need between inferences (and slows a second
        # session in a side-by-side benchmark), while a lone session measured about the same without
        # spinning (`python -m bench` times it; docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        chosen = choose_providers(providers, ort.get_available_providers())
        self.device_id = int(device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen,
                                                provider_options=provider_options(chosen, trt_cache_dir, device))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
            raise EngineError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.requested_providers = chosen
        check_provider_started(chosen, self.providers, named=providers != "auto", source=str(self.path))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = ModelContract.from_metadata(meta, source=str(self.path))
        (model_input,) = self.session.get_inputs()
        check_graph_shapes(self.contract, model_input.shape, self.session.get_outputs()[0].shape, str(self.path))
        model_output = self.session.get_outputs()[0]
        self._input_name, self._output_name = model_input.name, model_output.name
        self._input_dtype, self._output_dtype = (numpy_dtype(t.type) for t in (model_input, model_output))
        check_io_dtypes(self.contract, self._input_dtype, self._output_dtype, str(self.path))
        self._output_graph_shape = tuple(model_output.shape)
        fixed_batch = model_input.shape[0]
        self.fixed_batch = fixed_batch if isinstance(fixed_batch, int) else None
        self.on_device = self._on_gpu = self.providers[0] in GPU_PROVIDERS
        self._threads = threads
        self._cuda = None  # the CUDA device for output buffers, opened by the first infer_device

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.run_in_chunks(check_batch(self.contract, batch), self._run, exact=self.fixed_batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if not self._on_gpu:
            return self.session.run([self._output_name], {self._input_name: batch})[0]
        # Binding lets the provider allocate the output on the device and copy it back once.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._input_name, batch)
        binding.bind_output(self._output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def infer_device(self, batch):
        """The input and output stay in device memory (I/O binding on device pointers); the output
        is a DeviceArray from this engine's CUDA device, complete when this returns."""
        if not self._on_gpu:
            return super().infer_device(batch)
        pointer, shape, dtype = self.device_batch(batch, exact=self.fixed_batch)
        output_shape = (shape[0], *self._output_graph_shape[1:])
        if not all(isinstance(n, int) for n in output_shape):
            raise EngineError(f"{self.path} has output shape {self._output_graph_shape}; the GPU frame path needs "
                              "every dimension but the batch fixed (re-export with a fixed input size)")
        if self._cuda is None:
            from runtime.cuda.device import open_device
            self._cuda = open_device(self.device_id)
        output = self._cuda.empty(output_shape, self._output_dtype)
        binding = self.session.io_binding()
        # Element types as numpy scalar types (np.float32), the form ONNX Runtime documents.
        binding.bind_input(self._input_name, "cuda", self.device_id, dtype.type, list(shape), pointer)
        binding.bind_output(self._output_name, "cuda", self.device_id, self._output_dtype.type, list(output_shape),
                            output.pointer)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return output

    def close(self) -> None:
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "provider": self.providers[0],
            "providers": list(self.providers),
            "providers_requested": list(self.requested_providers),
            "device": "cuda" if self._on_gpu else "cpu",
            "threads": self._threads,
            "precision": self.contract.precision,
            "artefact": str(self.path),
        }


def provider_options(chosen: Sequence[str], trt_cache_dir: str | Path | None, device: int) -> list[dict]:
    """Options per chosen provider. The TensorRT provider's cache folder is made here: the
    provider creates it without parents, fails, and ONNX Runtime then quietly retries with fewer
    providers and without these options."""
    options = []
    for provider in chosen:
        if provider == TENSORRT_EP:
            cache_dir = Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir()
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EngineError(f"cannot create the TensorRT cache folder {cache_dir} ({exc.strerror}); "
                                  "give a writable trt_cache_dir") from None
            # TensorRT builds take minutes; the cache keeps them across runs of the same artefact.
            options.append({"device_id": device, "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True,
                            "trt_timing_cache_path": str(cache_dir)})
        elif provider == CUDA_EP:
            options.append({"device_id": device})
        else:
            options.append({})
    return options


def check_provider_started(chosen: Sequence[str], running: Sequence[str], *, named: bool, source: str) -> None:
    """A provider that fails to start is dropped by ONNX Runtime with only a printed "EP Error";
    refuse that when the user named the provider (with 'auto', the next best one is the point)."""
    if named and running[0] != chosen[0]:
        raise EngineError(f"ONNX Runtime could not start {chosen[0]} for {source} and fell back to {running[0]} "
                          "(its EP Error above says why, e.g. missing TensorRT or CUDA libraries); install what "
                          "it names or use providers='auto'")


def numpy_dtype(tensor_type: str) -> np.dtype | str:
    """The numpy dtype of an ONNX Runtime tensor type, or the type's name where numpy has none."""
    found = TENSOR_TYPES.get(tensor_type)
    return np.dtype(found) if found is not None else tensor_type
