"""One interface over every inference backend the runtime can drive."""
from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.contract import ModelContract

# What each output kind may hold. fp16 logits are what a strongly typed fp16 engine gives, and
# the ops take them as they are; labels beyond uint8/int32 (int64 argmax, bf16) are refused.
OUTPUT_DTYPES = {
    "logits": (np.dtype(np.float32), np.dtype(np.float16)),
    "lowres_logits": (np.dtype(np.float32), np.dtype(np.float16)),
    "labels": (np.dtype(np.uint8), np.dtype(np.int32)),
}


class EngineError(RuntimeError):
    """The artefact cannot be run by this backend here; the message says why and what to do."""


class Engine(abc.ABC):
    """Loads one artefact, exposes its contract, runs a batch.

    `infer` takes the network input exactly as the contract's input_layout says
    (float32 NCHW normalised RGB, or uint8 NHWC RGB) and returns the contract's output
    (float32/float16 logits or lowres logits, or uint8/int32 labels) as a host numpy array.
    Engines with `on_device` also run `infer_device` on device arrays, for the GPU frame path.
    """

    name: str = "engine"
    path: Path
    contract: ModelContract
    on_device: bool = False
    # The batch size the graph takes exactly, or None where it takes any (a dynamic batch axis):
    # how a rig batches its cameras' frames (Processor.infer_batch).
    fixed_batch: int | None = None

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def infer_device(self, batch):
        """`infer` on a device array (CUDA array interface) into a new device array, finished on return."""
        raise self.host_only_error()

    def host_only_error(self) -> EngineError:
        return EngineError(f"the {self.name} backend runs {self.path.name} on the host; the GPU frame path "
                           "needs TensorRT or ONNX Runtime's CUDA/TensorRT provider (or use --device cpu)")

    def device_batch(self, batch, *, exact: int | None = None) -> tuple[int, tuple[int, ...], np.dtype]:
        """(pointer, shape, dtype) of a device batch checked against the contract, like check_batch."""
        from runtime.cuda.device import array_view
        from runtime.engines import input_spec

        try:
            pointer, shape, dtype = array_view(batch, "the input batch")
        except TypeError as exc:
            raise EngineError(f"{exc}; the GPU frame path passes C-contiguous device arrays") from None
        expected_dtype, image_shape = input_spec(self.contract)
        if len(shape) != 4 or shape[1:] != image_shape or dtype != expected_dtype:
            raise EngineError(f"device input batch is {dtype} {shape}, {self.path.name} takes {expected_dtype} "
                              f"(N, {', '.join(map(str, image_shape))}); preprocess to the contract's input")
        if exact and shape[0] != exact:
            raise EngineError(f"{self.path} takes batches of exactly {exact}; got {shape[0]} on the device")
        return pointer, shape, dtype

    def run_in_chunks(self, batch: np.ndarray, run: Callable[[np.ndarray], np.ndarray], *,
                      exact: int | None = None, most: int | None = None) -> np.ndarray:
        """`run` over consecutive slices of `batch`, results joined: slices of exactly `exact`
        images (a fixed-batch graph) or of at most `most` (a dynamic batch's upper bound)."""
        if len(batch) == 0:
            raise EngineError(f"{self.path.name} was given an empty batch; pass at least one image")
        if exact:
            if len(batch) % exact:
                raise EngineError(f"{self.path} takes batches of exactly {exact}; got {len(batch)} "
                                  "(export with dynamic_batch: true)")
            step = exact
        else:
            step = most or len(batch)
        outputs = [run(batch[start:start + step]) for start in range(0, len(batch), step)]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def describe(self) -> dict:
        """Backend, device and provider details stored beside benchmark results."""
        return {"backend": self.name}

    def close(self) -> None:
        """Release device resources; engines are also context managers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_io_dtypes(contract: ModelContract, input_dtype: np.dtype | str, output_dtype: np.dtype | str,
                    source: str) -> None:
    """Refuse, when the engine opens, input and output types the contract does not allow (a str
    is the backend's name for a type numpy lacks, such as BF16 or FP8)."""
    from runtime.engines import input_spec

    expected, _ = input_spec(contract)
    if input_dtype != expected:
        raise EngineError(f"{source} takes {_type_name(input_dtype)} input, its contract ({contract.input_layout}) "
                          f"says {expected}; re-export the model with `python -m export.run`")
    allowed = OUTPUT_DTYPES[contract.output_kind]
    if output_dtype not in allowed:
        raise EngineError(f"{source} gives {_type_name(output_dtype)} {contract.output_kind}, the runtime takes "
                          f"{' or '.join(d.name for d in allowed)}; re-export the model with `python -m export.run`")


def _type_name(dtype: np.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else dtype.name
