"""One CUDA device for the runtime's GPU code, driven through pycuda or CuPy, whichever is here.

Everything that touches the device runs inside `device.current()`, which makes the device's
primary context current in the calling thread and restores the previous one afterwards. The
primary context is the one the CUDA runtime uses, so buffers made here can be handed to
TensorRT, ONNX Runtime and torch, and a pipeline stage thread can call in with nothing set up
(pycuda's `autoinit` makes a private context instead, which those libraries cannot use).

pycuda compiles kernels with nvcc, so it needs the CUDA toolkit; CuPy compiles the same source
with NVRTC from its wheels. Neither is imported before a device is opened.
"""
from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

LIBRARIES = ("pycuda", "cupy")


class CudaUnavailableError(RuntimeError):
    """No CUDA library or no usable GPU here; the message says what is missing and what to install."""


class DeviceArray:
    """A C-contiguous array in device memory: its pointer, shape and dtype, and the allocation
    that keeps the memory alive (views share it). Other libraries read it through the CUDA
    array interface."""

    def __init__(self, device: "CudaDevice", pointer: int, shape: Sequence[int], dtype, owner):
        self.device = device
        self.pointer = int(pointer)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._owner = owner

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.pointer, False), "strides": None,
                "version": 3}

    def __getitem__(self, index: int) -> "DeviceArray":
        """The `index`-th item along the first axis, as a view (how a batch gives back its image)."""
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.shape[0]:
            raise IndexError(f"a DeviceArray takes one index in [0, {self.shape[0]}), got {index!r}")
        item = self.nbytes // self.shape[0]
        return DeviceArray(self.device, self.pointer + int(index) * item, self.shape[1:], self.dtype, self._owner)

    def reshape(self, shape: Sequence[int]) -> "DeviceArray":
        if int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize != self.nbytes:
            raise ValueError(f"cannot reshape a device array of shape {self.shape} into {tuple(shape)}")
        return DeviceArray(self.device, self.pointer, shape, self.dtype, self._owner)

    def get(self) -> np.ndarray:
        """A host copy, waited for (for checks and tests; the frame path downloads into pinned buffers)."""
        return self.device.download(self)


def array_view(obj, name: str = "array") -> tuple[int, tuple[int, ...], np.dtype]:
    """(pointer, shape, dtype) of a C-contiguous device array of any library (DeviceArray, a
    pycuda GPUArray, CuPy, torch), read from its CUDA array interface."""
    interface = getattr(obj, "__cuda_array_interface__", None)
    if interface is None:
        raise TypeError(f"{name} is a {type(obj).__name__}, not a device array")
    shape = tuple(int(n) for n in interface["shape"])
    dtype = np.dtype(interface["typestr"])
    strides = interface.get("strides")
    if strides is not None and tuple(strides) != _c_strides(shape, dtype.itemsize):
        raise TypeError(f"{name} is not C-contiguous (strides {tuple(strides)} for shape {shape})")
    return int(interface["data"][0]), shape, dtype


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


class CudaDevice(abc.ABC):
    """The device operations the runtime needs, the same through pycuda and CuPy.

    Streams, events and kernels are the library's own objects; pointers are ints.
    """

    library: str
    index: int
    name: str
    compute_capability: tuple[int, int]

    @abc.abstractmethod
    def current(self) -> contextlib.AbstractContextManager:
        """Make the device's primary context current in this thread for the block."""

    @abc.abstractmethod
    def _allocate(self, nbytes: int) -> tuple[int, object]:
        """(pointer, owner) of `nbytes` from the device memory pool; freeing the owner returns it."""

    @abc.abstractmethod
    def pinned_empty(self, shape: Sequence[int], dtype) -> np.ndarray:
        """A host array in page-locked memory from the pinned pool (copies from it run asynchronously)."""

    @abc.abstractmethod
    def new_stream(self): ...

    @abc.abstractmethod
    def stream_handle(self, stream) -> int:
        """The cudaStream_t as an int, for TensorRT and ONNX Runtime."""

    @abc.abstractmethod
    def synchronize(self, stream) -> None: ...

    @abc.abstractmethod
    def record_event(self, stream):
        """An event recorded on `stream`; its `synchronize()` waits for the work queued before it."""

    @abc.abstractmethod
    def copy_to_device(self, pointer: int, host: np.ndarray, stream) -> None:
        """Queue host -> device on `stream` (asynchronous when `host` is pinned)."""

    @abc.abstractmethod
    def copy_to_host(self, host: np.ndarray, pointer: int, stream) -> None:
        """Queue device -> host on `stream` (asynchronous when `host` is pinned)."""

    @abc.abstractmethod
    def copy_on_device(self, destination: int, source: int, nbytes: int, stream) -> None:
        """Queue device -> device on `stream` (a rig's frames gathered into one batch)."""

    @abc.abstractmethod
    def compile(self, source: str, signatures: Mapping[str, str], options: Sequence[str]) -> dict:
        """{name: launch(grid, block, stream, *args)} for the extern "C" kernels of `source`;
        signatures give each kernel's parameters (P pointer, i int32, f float32)."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free what the pools hold (the primary context stays retained for the process)."""

    # -- shared on top of the above --------------------------------------------------------

    def empty(self, shape: Sequence[int], dtype) -> DeviceArray:
        """An uninitialised device array from the pool (no cudaMalloc, so no synchronisation)."""
        shape = tuple(int(n) for n in shape)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        with self.current():
            pointer, owner = self._allocate(nbytes)
        return DeviceArray(self, pointer, shape, dtype, owner)

    def to_device(self, host: np.ndarray, stream=None) -> DeviceArray:
        """A device copy of `host`; waited for when no stream is given."""
        host = np.ascontiguousarray(host)
        array = self.empty(host.shape, host.dtype)
        with self.current():
            self.copy_to_device(array.pointer, host, stream)
            if stream is None:
                self.synchronize(None)
        return array

    def download(self, array, out: np.ndarray | None = None, stream=None) -> np.ndarray:
        """`array` copied into `out` (a new host array when None); waited for when no stream is given."""
        pointer, shape, dtype = array_view(array)
        if out is None:
            out = np.empty(shape, dtype)
        elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"download target must be a C-contiguous {dtype} array of shape {shape}, "
                             f"got {out.dtype} {out.shape}")
        with self.current():
            self.copy_to_host(out, pointer, stream)
            if stream is None:
                self.synchronize(None)
        return out

    def close(self) -> None:
        """Free the pools; safe to call twice, from any thread."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._release()

    def describe(self) -> dict:
        return {"library": self.library, "gpu": self.name,
                "compute_capability": ".".join(map(str, self.compute_capability))}


_PRIMARY_CONTEXTS: dict[tuple[int, int], object] = {}
_PRIMARY_CONTEXTS_LOCK = threading.Lock()


def primary_context(driver, index: int):
    """Device `index`'s primary context, retained once per process and never detached: pycuda
    releases a context only from the thread that retained it (elsewhere it silently does nothing),
    and the driver releases it at exit anyway."""
    with _PRIMARY_CONTEXTS_LOCK:
        key = (id(driver), index)
        if key not in _PRIMARY_CONTEXTS:
            _PRIMARY_CONTEXTS[key] = driver.Device(index).retain_primary_context()
        return _PRIMARY_CONTEXTS[key]


class PycudaDevice(CudaDevice):
    """pycuda objects free themselves only where their context is current (or in the thread that
    made it), so everything made here is made and dropped inside `current()`."""

    library = "pycuda"

    def __init__(self, index: int, driver, tools, source_module):
        self._driver, self._source_module = driver, source_module
        driver.init()
        gpu = driver.Device(index)
        self.index, self.name = index, gpu.name()
        self.compute_capability = tuple(gpu.compute_capability())
        self._context = primary_context(driver, index)
        with self.current():
            self._pool = tools.DeviceMemoryPool()
            self._pinned_pool = tools.PageLockedMemoryPool()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._driver.Context.pop()

    def _allocate(self, nbytes):
        allocation = self._pool.allocate(nbytes)
        return int(allocation), allocation

    def pinned_empty(self, shape, dtype):
        with self.current():
            return self._pinned_pool.allocate(tuple(shape), np.dtype(dtype))

    def new_stream(self):
        with self.current():
            return self._driver.Stream()

    def stream_handle(self, stream) -> int:
        return 0 if stream is None else int(stream.handle)

    def synchronize(self, stream) -> None:
        with self.current():
            if stream is None:
                self._driver.Context.synchronize()
            else:
                stream.synchronize()

    def record_event(self, stream):
        with self.current():
            return self._driver.Event().record(stream)

    def copy_to_device(self, pointer, host, stream):
        with self.current():
            self._driver.memcpy_htod_async(pointer, host, stream)

    def copy_to_host(self, host, pointer, stream):
        with self.current():
            self._driver.memcpy_dtoh_async(host, pointer, stream)

    def copy_on_device(self, destination, source, nbytes, stream):
        with self.current():
            self._driver.memcpy_dtod_async(destination, source, nbytes, stream)

    def compile(self, source, signatures, options):
        with self.current():
            module = self._source_module(source, options=list(options), no_extern_c=True)
            kernels = {name: module.get_function(name).prepare(formats) for name, formats in signatures.items()}
        launches = {}
        for name, kernel in kernels.items():
            def launch(grid, block, stream, *args, _kernel=kernel):
                with self.current():
                    _kernel.prepared_async_call(grid, block, stream, *args)
            launches[name] = launch
        return launches

    def _release(self) -> None:
        with self.current():
            self._pool.stop_holding()
            self._pinned_pool.stop_holding()


class CupyDevice(CudaDevice):
    library = "cupy"
    _SCALARS = {"P": np.uint64, "i": np.int32, "f": np.float32}

    def __init__(self, index: int, cupy):
        self._cupy = cupy
        self._device = cupy.cuda.Device(index)
        properties = cupy.cuda.runtime.getDeviceProperties(index)
        name = properties["name"]
        self.index, self.name = index, name.decode() if isinstance(name, bytes) else str(name)
        self.compute_capability = (int(properties["major"]), int(properties["minor"]))
        # Pools of this device's own, so close() frees exactly what the runtime took.
        self._pool = cupy.cuda.MemoryPool()
        self._pinned_pool = cupy.cuda.PinnedMemoryPool()

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        with self._device:
            yield

    def _allocate(self, nbytes):
        memory = self._pool.malloc(nbytes)
        return memory.ptr, memory

    def pinned_empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        memory = self._pinned_pool.malloc(max(1, count * dtype.itemsize))
        return np.frombuffer(memory, dtype, count).reshape(tuple(shape))

    def new_stream(self):
        with self.current():
            return self._cupy.cuda.Stream(non_blocking=True)

    def stream_handle(self, stream) -> int:
        return 0 if stream is None else int(stream.ptr)

    def synchronize(self, stream) -> None:
        with self.current():
            if stream is None:
                self._cupy.cuda.runtime.deviceSynchronize()
            else:
                stream.synchronize()

    def record_event(self, stream):
        with self.current():
            event = self._cupy.cuda.Event(disable_timing=True)
            event.record(stream)
            return event

    def _copy(self, destination: int, source: int, nbytes: int, kind: int, stream) -> None:
        with self.current():
            self._cupy.cuda.runtime.memcpyAsync(destination, source, nbytes, kind, self.stream_handle(stream))

    def copy_to_device(self, pointer, host, stream):
        self._copy(pointer, host.ctypes.data, host.nbytes, self._cupy.cuda.runtime.memcpyHostToDevice, stream)

    def copy_to_host(self, host, pointer, stream):
        self._copy(host.ctypes.data, pointer, host.nbytes, self._cupy.cuda.runtime.memcpyDeviceToHost, stream)

    def copy_on_device(self, destination, source, nbytes, stream):
        self._copy(destination, source, nbytes, self._cupy.cuda.runtime.memcpyDeviceToDevice, stream)

    def compile(self, source, signatures, options):
        with self.current():
            module = self._cupy.RawModule(code=source, options=tuple(options))
            kernels = {name: module.get_function(name) for name in signatures}
        launches = {}
        for name, kernel in kernels.items():
            types = [self._SCALARS[code] for code in signatures[name]]

            def launch(grid, block, stream, *args, _kernel=kernel, _types=types):
                if len(args) != len(_types):
                    raise TypeError(f"kernel takes {len(_types)} arguments, got {len(args)}")
                typed = tuple(kind(value) for kind, value in zip(_types, args))
                with self.current(), (stream if stream is not None else contextlib.nullcontext()):
                    _kernel(tuple(grid), tuple(block), typed)
            launches[name] = launch
        return launches

    def _release(self) -> None:
        with self.current():
            self._pool.free_all_blocks()
            self._pinned_pool.free_all_blocks()


def open_device(index: int = 0, library: str = "auto") -> CudaDevice:
    """Device `index` through `library` ('auto': pycuda where installed, else CuPy)."""
    if library not in ("auto", *LIBRARIES):
        raise CudaUnavailableError(f"unknown CUDA library {library!r}; use auto, pycuda or cupy")
    missing = []
    for name in (LIBRARIES if library == "auto" else (library,)):
        try:
            if name == "pycuda":
                import pycuda.driver as driver
                from pycuda import tools
                from pycuda.compiler import SourceModule
            else:
                import cupy
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        try:
            if name == "pycuda":
                return PycudaDevice(index, driver, tools, SourceModule)
            return CupyDevice(index, cupy)
        except Exception as exc:  # noqa: BLE001 - each library raises its own driver error types
            raise CudaUnavailableError(f"CUDA device {index} is not usable through {name}: "
                                       f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                                       "check the NVIDIA driver (nvidia-smi) or run on the CPU") from None
    raise CudaUnavailableError(f"no CUDA library: {'; '.join(missing)}; install CuPy "
                               "(`pip install -e '.[gpu]'`) or pycuda with the CUDA toolkit (`.[pycuda]`), "
                               "or run on the CPU")
