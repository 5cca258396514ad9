"""TensorRT backend (TensorRT 10/11 name-based I/O API) on a runtime.cuda device (pycuda or CuPy).

TensorRT and the CUDA library are imported when an engine is opened, never at module import.
The engine's sidecar is checked first, so an engine from another TensorRT version or GPU is
refused with a clear message instead of failing inside deserialisation. Every TensorRT call runs
with the device's primary context current, so any thread may call `infer` or `close`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.engines import check_batch
from runtime.engines.base import Engine, EngineError, check_io_dtypes
from runtime.engines.sidecar import check_compatible, read_sidecar

# TensorRT data types by name (getattr: not every TensorRT version has them all); BF16, FP8,
# INT4 and the like have no numpy dtype and are refused by name.
TENSORRT_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                  "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_}


def import_backend(device: int = 0):
    """(tensorrt, an opened runtime.cuda device), or EngineError naming what to install."""
    try:
        import tensorrt
    except ImportError:
        raise EngineError("the tensorrt backend needs the `tensorrt` Python package (pip install -e '.[gpu]') "
                          "and an NVIDIA GPU; run the .onnx artefact with onnxruntime instead") from None
    from runtime.cuda.device import CudaUnavailableError, open_device

    try:
        return tensorrt, open_device(device)
    except CudaUnavailableError as exc:
        raise EngineError(f"the tensorrt backend needs a CUDA device: {exc}") from None


def numpy_dtype(trt, data_type) -> np.dtype | str:
    """The numpy dtype of a TensorRT DataType, or its name where numpy has none."""
    for name, dtype in TENSORRT_TYPES.items():
        if getattr(trt.DataType, name, None) == data_type:
            return np.dtype(dtype)
    return str(getattr(data_type, "name", data_type))


class _HostMirror:
    """A device buffer with a pinned host twin, regrown when a larger batch comes (host `infer` only)."""

    def __init__(self, device, dtype: np.dtype):
        self._device, self.dtype = device, dtype
        self.device_array = self.host = None

    def ensure(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        if self.host is None or count > self.host.size:
            self.host = self._device.pinned_empty((count,), self.dtype)
            self.device_array = self._device.empty((count,), self.dtype)
        return self.host[:count].reshape(shape)


class TensorRTEngine(Engine):
    name = "tensorrt"
    on_device = True

    def __init__(self, path: str | Path, device: int = 0):
        self.path = Path(path)
        self.sidecar = read_sidecar(self.path)
        self.contract = self.sidecar.contract
        trt, cuda = import_backend(device)
        self._trt, self._cuda = trt, cuda
        self._engine = self._execution = self._stream = None
        self._mirrors: dict[str, _HostMirror] = {}
        try:
            check_compatible(self.sidecar, tensorrt_version=trt.__version__, gpu_name=cuda.name,
                             compute_capability=cuda.compute_capability, source=str(self.path))
            with cuda.current():
                self._open(trt)
        except BaseException:
            self.close()
            raise

    def _open(self, trt) -> None:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path}; rebuild it with `python -m export.run`")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{self.path} has inputs {inputs} and outputs {outputs}; expected one of each")
        self._input, self._output = inputs[0], outputs[0]
        self._input_dtype, self._output_dtype = (numpy_dtype(trt, self._engine.get_tensor_dtype(n))
                                                 for n in (self._input, self._output))
        check_io_dtypes(self.contract, self._input_dtype, self._output_dtype, str(self.path))
        batch = self._engine.get_tensor_shape(self._input)[0]
        if batch > 0:
            self.fixed_batch, self._max_batch = batch, batch
        else:  # dynamic: profile 0 bounds the batch
            low, _, high = self._engine.get_tensor_profile_shape(self._input, 0)
            self.fixed_batch, self._batch_range = None, (low[0], high[0])
            self._max_batch = high[0]
        self._execution = self._engine.create_execution_context()
        self._stream = self._cuda.new_stream()
        self._mirrors = {name: _HostMirror(self._cuda, dtype)
                         for name, dtype in ((self._input, self._input_dtype), (self._output, self._output_dtype))}

    # -- inference ----------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(self.contract, batch)
        with self._cuda.current():
            return self.run_in_chunks(batch, self._run_host, exact=self.fixed_batch, most=self._max_batch)

    def _run_host(self, batch: np.ndarray) -> np.ndarray:
        mirror_in = self._mirrors[self._input]
        np.copyto(mirror_in.ensure(batch.shape), batch, casting="no")
        self._cuda.copy_to_device(mirror_in.device_array.pointer, mirror_in.host[:batch.size], self._stream)
        output = self._execute(mirror_in.device_array.pointer, batch.shape)
        host_out = self._mirrors[self._output].ensure(output.shape)
        self._cuda.copy_to_host(host_out, output.pointer, self._stream)
        self._cuda.synchronize(self._stream)
        return host_out.copy()

    def infer_device(self, batch):
        """The batch (at most the profile's maximum) read and the output written in device memory."""
        pointer, shape, _ = self.device_batch(batch, exact=self.fixed_batch)
        if shape[0] > self._max_batch:
            raise EngineError(f"{self.path} takes at most {self._max_batch} images per batch; got {shape[0]}")
        with self._cuda.current():
            output = self._execute(pointer, shape)
            self._cuda.synchronize(self._stream)
        return output

    def _execute(self, input_pointer: int, shape: tuple[int, ...]):
        """Queue one run on this engine's stream; returns the pooled device output."""
        execution = self._execution
        if self.fixed_batch is None and not execution.set_input_shape(self._input, tuple(shape)):
            low, high = self._batch_range
            raise EngineError(f"TensorRT refused input shape {tuple(shape)} for {self.path} (its profile takes "
                              f"batches of {low} to {high}); rebuild it with a larger export.max_batch")
        out_shape = tuple(execution.get_tensor_shape(self._output))
        if any(n < 0 for n in out_shape):
            raise EngineError(f"{self.path} leaves its output shape open ({out_shape}) after the input shape was "
                              "set; rebuild it with `python -m export.run`")
        output = self._cuda.empty(out_shape, self._output_dtype)
        for name, pointer in ((self._input, input_pointer), (self._output, output.pointer)):
            if not execution.set_tensor_address(name, pointer):
                raise EngineError(f"TensorRT refused the device address of {name!r} for {self.path}")
        if not execution.execute_async_v3(self._cuda.stream_handle(self._stream)):
            raise EngineError(f"TensorRT failed to run {self.path}; see the TensorRT log above")
        return output

    def describe(self) -> dict:
        return {"backend": self.name, "tensorrt": self._trt.__version__, "device": "cuda",
                "gpu": self._cuda.name, "cuda_library": self._cuda.library, "precision": self.sidecar.precision,
                "build": self.sidecar.build, "artefact": str(self.path)}

    def close(self) -> None:
        """Free the buffers, stream and TensorRT objects with the context current (so from any
        thread); closing twice does nothing."""
        if self._cuda is None:
            return
        with self._cuda.current():
            self._mirrors.clear()
            self._execution = self._engine = self._stream = None
        self._cuda.close()
        self._cuda = None
