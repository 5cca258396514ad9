"""Inference engines behind one interface; `open_engine` picks one for an artefact.

The backends are imported only when opened, so the runtime imports without torch,
TensorRT or pycuda installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.contract import ModelContract
from runtime.engines.base import Engine, EngineError

BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".ts": "torch"}
BACKENDS = ("onnxruntime", "tensorrt", "torch")

__all__ = ["BACKENDS", "Engine", "EngineError", "check_batch", "check_graph_shapes", "input_spec", "open_engine"]


def input_spec(contract: ModelContract) -> tuple[np.dtype, tuple[int, int, int]]:
    """dtype and per-image shape of the network input the contract names."""
    height, width = contract.input_size
    if contract.input_layout == "nhwc_uint8":
        return np.dtype(np.uint8), (height, width, 3)
    return np.dtype(np.float32), (3, height, width)


def check_batch(contract: ModelContract, batch: np.ndarray) -> np.ndarray:
    """The batch as a C-contiguous array of the contract's dtype and shape, or one clear error."""
    dtype, shape = input_spec(contract)
    if batch.ndim != 4 or tuple(batch.shape[1:]) != shape:
        raise EngineError(
            f"input batch has shape {tuple(batch.shape)}, the model takes (N, {', '.join(map(str, shape))}) "
            f"({contract.input_layout}); preprocess frames to the model's input size")
    if batch.dtype != dtype:
        raise EngineError(
            f"input batch is {batch.dtype}, the model takes {dtype} ({contract.input_layout}); "
            "preprocess with the contract's input_layout")
    return np.ascontiguousarray(batch)


def check_graph_shapes(contract: ModelContract, input_shape, output_shape, source: str) -> None:
    """Refuse an artefact whose graph does not take or give what its contract says, when it opens
    rather than at the first frame. Dimensions the graph leaves open (names, None) are not checked."""
    height, width = contract.input_size
    classes = contract.num_classes
    expected = {"input": (None, *input_spec(contract)[1]),
                "output": {"logits": (None, classes, height, width), "lowres_logits": (None, classes, None, None),
                           "labels": (None, height, width)}[contract.output_kind]}
    for what, graph in (("input", input_shape), ("output", output_shape)):
        if not graph:  # rank unknown to the runtime
            continue
        wanted = expected[what]
        if len(graph) != len(wanted) or any(isinstance(g, int) and w is not None and g != w
                                            for g, w in zip(graph, wanted)):
            shown = ", ".join("N" if i == 0 and w is None else "?" if w is None else str(w)
                              for i, w in enumerate(wanted))
            raise EngineError(
                f"{source}: its model contract says the {what} is ({shown}) but the graph's is "
                f"({', '.join(map(str, graph))}); re-export it with `python -m export.run` so the two agree")


def open_engine(path: str | Path, backend: str = "auto", **kwargs) -> Engine:
    """An engine for `path`; backend 'auto' follows the suffix (.onnx, .engine, .ts)."""
    path = Path(path)
    if backend == "auto":
        backend = BACKEND_BY_SUFFIX.get(path.suffix)
        if backend is None:
            raise EngineError(
                f"cannot tell the backend of {path} from its suffix; use one of "
                f"{', '.join(BACKEND_BY_SUFFIX)} or name the backend ({', '.join(BACKENDS)})")
    if not path.exists():
        raise EngineError(f"model artefact {path} not found; run `dvc repro export` or fix the path")
    if backend == "onnxruntime":
        from runtime.engines.onnxruntime_engine import OnnxRuntimeEngine
        return OnnxRuntimeEngine(path, **kwargs)
    if backend == "tensorrt":
        from runtime.engines.tensorrt_engine import TensorRTEngine
        return TensorRTEngine(path, **kwargs)
    if backend == "torch":
        from runtime.engines.torch_engine import TorchEngine
        return TorchEngine(path, **kwargs)
    raise EngineError(f"unknown backend {backend!r}; use auto or one of {', '.join(BACKENDS)}")
