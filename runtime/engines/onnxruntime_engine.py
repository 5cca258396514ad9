"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, whichever this machine has."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.contract import ModelContract
from runtime.engines import check_batch
from runtime.engines.base import Engine, EngineError

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERENCE = (TENSORRT_EP, CUDA_EP, CPU_EP)
ALIASES = {"tensorrt": TENSORRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
GPU_PROVIDERS = (TENSORRT_EP, CUDA_EP)


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
                 trt_cache_dir: str | Path | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: on a vehicle's few cores a spinning pool steals
        # the cores that decode and the C ops need between inferences (and slows a second
        # session in a side-by-side benchmark), while a lone session measured the same without
        # spinning (88.7 vs 90.0 ms p50, fp32 256x512, 2 threads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        chosen = choose_providers(providers, ort.get_available_providers())
        cache_dir = Path(trt_cache_dir) if trt_cache_dir else default_trt_cache_dir()
        provider_options = [
            # TensorRT builds take minutes; the cache keeps them across runs of the same artefact.
            {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
             "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)}
            if p == TENSORRT_EP else {} for p in chosen]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen,
                                                provider_options=provider_options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
            raise EngineError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = ModelContract.from_metadata(meta, source=str(self.path))
        (model_input,) = self.session.get_inputs()
        self._input_name = model_input.name
        self._output_name = self.session.get_outputs()[0].name
        fixed_batch = model_input.shape[0]
        self._fixed_batch = fixed_batch if isinstance(fixed_batch, int) else None
        self.providers = self.session.get_providers()
        self._on_gpu = self.providers[0] in GPU_PROVIDERS
        self._threads = threads

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(self.contract, batch)
        step = self._fixed_batch or len(batch)
        if len(batch) % step:
            raise EngineError(
                f"{self.path} takes batches of exactly {step}; got {len(batch)} (export with dynamic_batch: true)")
        outputs = [self._run(batch[i:i + step]) for i in range(0, len(batch), step)]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if not self._on_gpu:
            return self.session.run([self._output_name], {self._input_name: batch})[0]
        # Binding lets the provider allocate the output on the device and copy it back once.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._input_name, batch)
        binding.bind_output(self._output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "provider": self.providers[0],
            "providers": list(self.providers),
            "device": "cuda" if self._on_gpu else "cpu",
            "threads": self._threads,
            "precision": self.contract.precision,
            "artefact": str(self.path),
        }
