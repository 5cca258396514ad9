"""TensorRT backend (TensorRT 10/11 name-based I/O API, pycuda buffers and stream).

TensorRT and pycuda are imported when an engine is opened, never at module import.
The engine's sidecar is checked first, so an engine from another TensorRT version or GPU is
refused with a clear message instead of failing inside deserialisation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.engines import check_batch
from runtime.engines.base import Engine, EngineError
from runtime.engines.sidecar import check_compatible, read_sidecar


def import_backend():
    """(tensorrt, pycuda.driver), or EngineError naming what to install."""
    try:
        import tensorrt
    except ImportError:
        raise EngineError("the tensorrt backend needs the `tensorrt` Python package (pip install tensorrt) "
                          "and an NVIDIA GPU; run the .onnx artefact with onnxruntime instead") from None
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise EngineError("the tensorrt backend needs pycuda (pip install pycuda); "
                          "run the .onnx artefact with onnxruntime instead") from None
    return tensorrt, cuda


class _DeviceBuffer:
    """A device allocation with a pinned host mirror, regrown when a larger batch comes."""

    def __init__(self, cuda, dtype: np.dtype):
        self._cuda = cuda
        self.dtype = dtype
        self.capacity = 0
        self.device = None
        self.host = None

    def ensure(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        if count > self.capacity:
            self.free()
            self.host = self._cuda.pagelocked_empty(count, self.dtype)
            self.device = self._cuda.mem_alloc(max(1, count * self.dtype.itemsize))
            self.capacity = count
        return self.host[:count].reshape(shape)

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
        self.device = self.host = None
        self.capacity = 0


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, path: str | Path, device: int = 0):
        self.path = Path(path)
        self.sidecar = read_sidecar(self.path)
        self.contract = self.sidecar.contract
        trt, cuda = import_backend()
        self._trt, self._cuda = trt, cuda
        cuda.init()
        gpu = cuda.Device(device)
        check_compatible(self.sidecar, tensorrt_version=trt.__version__, gpu_name=gpu.name(),
                         compute_capability=tuple(gpu.compute_capability()), source=str(self.path))
        self.gpu_name = gpu.name()
        # The primary context is the one the CUDA runtime (and so TensorRT) uses on this device.
        self._context = gpu.retain_primary_context()
        self._context.push()
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise EngineError(f"TensorRT could not deserialise {self.path}; rebuild it with `python -m export.run`")
            self._execution = self._engine.create_execution_context()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if n not in inputs]
            if len(inputs) != 1 or len(outputs) != 1:
                raise EngineError(f"{self.path} has inputs {inputs} and outputs {outputs}; expected one of each")
            self._input, self._output = inputs[0], outputs[0]
            self._fixed_batch = self._engine.get_tensor_shape(self._input)[0]
            self._buffers = {
                name: _DeviceBuffer(cuda, np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
                for name in (self._input, self._output)}
            self._stream = cuda.Stream()
        except BaseException:
            self._context.pop()
            self._context.detach()
            raise
        self._context.pop()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(self.contract, batch)
        step = self._fixed_batch if self._fixed_batch > 0 else len(batch)
        if len(batch) % step:
            raise EngineError(
                f"{self.path} takes batches of exactly {step}; got {len(batch)} (export with dynamic_batch: true)")
        self._context.push()
        try:
            outputs = [self._run(batch[i:i + step]) for i in range(0, len(batch), step)]
        finally:
            self._context.pop()
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        cuda, execution = self._cuda, self._execution
        execution.set_input_shape(self._input, batch.shape)
        host_in = self._buffers[self._input].ensure(batch.shape)
        np.copyto(host_in, batch, casting="no")
        out_shape = tuple(execution.get_tensor_shape(self._output))
        host_out = self._buffers[self._output].ensure(out_shape)
        device_in, device_out = self._buffers[self._input].device, self._buffers[self._output].device
        cuda.memcpy_htod_async(device_in, host_in, self._stream)
        execution.set_tensor_address(self._input, int(device_in))
        execution.set_tensor_address(self._output, int(device_out))
        if not execution.execute_async_v3(stream_handle=self._stream.handle):
            raise EngineError(f"TensorRT failed to run {self.path}; see the TensorRT log above")
        cuda.memcpy_dtoh_async(host_out, device_out, self._stream)
        self._stream.synchronize()
        return host_out.copy()

    def describe(self) -> dict:
        return {"backend": self.name, "tensorrt": self._trt.__version__, "device": "cuda",
                "gpu": self.gpu_name, "precision": self.sidecar.precision, "build": self.sidecar.build,
                "artefact": str(self.path)}

    def close(self) -> None:
        if getattr(self, "_engine", None) is None:
            return
        self._context.push()
        try:
            for buffer in self._buffers.values():
                buffer.free()
            self._execution = self._engine = None
        finally:
            self._context.pop()
            self._context.detach()
