"""Narrow stand-ins for pycuda, TensorRT and ONNX Runtime, for testing the host code without a GPU.

Each records the calls made to it and enforces the documented contract the host code relies on
(a CUDA context must be current in the calling thread, set_input_shape answers False outside the
profile, a timing cache from elsewhere is refused...), raising where the real library would fail.
Device memory is emulated with host bytes, so copies and the stand-in network move real data.
With `pycuda_device(kernels=...)` the launches run the real kernels.cu compiled for the CPU
(tests/runtime/host_cuda) on those bytes, so the GPU code computes real results.
"""
from __future__ import annotations

import threading
import types
from pathlib import Path

import numpy as np
import onnxruntime

from runtime.engines import check_batch
from runtime.engines.base import Engine

REAL_SESSION = onnxruntime.InferenceSession  # kept before any test replaces it


class StandInCudaError(RuntimeError):
    """What pycuda raises (pycuda.driver.LogicError) for a call without a current context."""


# ------------------------------------------------------------------------------ pycuda


class StandInDriver:
    """Stands in for the `pycuda.driver` module on one GPU.

    Contract enforced, as the CUDA driver and pycuda have it: contexts are current per thread, on a
    per-thread stack (push / Context.pop); every call that allocates, copies, launches or makes a
    stream or event raises "invalid device context" in a thread where no context is current; and a
    stream or event dropped where its context is not current leaks (pycuda can only warn), which
    is recorded in `leaks`.
    """

    def __init__(self, gpu_name="NVIDIA H200", capability=(9, 0)):
        self.gpu_name, self.capability = gpu_name, capability
        self._local = threading.local()
        self.calls: list[tuple[str, str]] = []  # (call, thread name)
        self.leaks: list[str] = []
        self.copies: list[tuple[str, int]] = []  # ("htod" | "dtoh", bytes)
        self.retains = 0
        self._memory: dict[int, np.ndarray] = {}
        self._memory_lock = threading.Lock()  # allocations come from every pipeline stage thread
        self._next_pointer = 1 << 20
        self.Context = types.SimpleNamespace(pop=self._pop, synchronize=self._synchronize,
                                             get_current=self._get_current)
        self.Device = lambda index: StandInGpu(self, index)

    # -- contexts -------------------------------------------------------------------------

    def _stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack

    def require_context(self, call: str) -> None:
        self.calls.append((call, threading.current_thread().name))
        if not self._stack():
            raise StandInCudaError(f"{call} failed: invalid device context")

    def _pop(self):
        if not self._stack():
            raise StandInCudaError("context::pop failed: cannot pop non-current context")
        self._stack().pop()

    def _synchronize(self):
        self.require_context("Context.synchronize")

    def _get_current(self):
        return self._stack()[-1] if self._stack() else None

    def current_depth(self) -> int:
        return len(self._stack())

    def init(self):
        self.calls.append(("init", threading.current_thread().name))

    # -- memory ---------------------------------------------------------------------------

    def allocate(self, nbytes: int) -> int:
        self.require_context("mem_alloc")
        with self._memory_lock:
            pointer = self._next_pointer
            self._memory[pointer] = np.zeros(nbytes, np.uint8)
            self._next_pointer += (nbytes + 255) // 256 * 256 + 256
        return pointer

    def _blocks(self) -> list[tuple[int, np.ndarray]]:
        with self._memory_lock:
            return list(self._memory.items())

    def device_bytes(self, pointer: int, nbytes: int) -> np.ndarray:
        """The emulated device bytes at `pointer` (a view), for stand-ins and tests."""
        for base, block in self._blocks():
            if base <= pointer and pointer + nbytes <= base + block.size:
                return block[pointer - base:pointer - base + nbytes]
        raise StandInCudaError(f"invalid device pointer {pointer:#x} (+{nbytes} bytes)")

    def host_address(self, pointer: int) -> int:
        """Where device `pointer` lies in host memory, for host-compiled kernels; a pointer
        outside every allocation (a host pointer passed as a device one) raises, as it would fault."""
        for base, block in self._blocks():
            if base <= pointer < base + block.size:
                return block.ctypes.data + pointer - base
        raise StandInCudaError(f"kernel argument {pointer:#x} is not device memory: illegal address")

    def memcpy_htod_async(self, destination, source: np.ndarray, stream=None):
        self.require_context("memcpy_htod_async")
        source = np.ascontiguousarray(source).reshape(-1).view(np.uint8)
        self.device_bytes(int(destination), source.size)[:] = source
        self.copies.append(("htod", source.size))

    def memcpy_dtoh_async(self, destination: np.ndarray, source, stream=None):
        self.require_context("memcpy_dtoh_async")
        flat = destination.reshape(-1).view(np.uint8)
        flat[:] = self.device_bytes(int(source), flat.size)
        self.copies.append(("dtoh", flat.size))

    def memcpy_dtod_async(self, destination, source, size: int, stream=None):
        self.require_context("memcpy_dtod_async")
        self.device_bytes(int(destination), size)[:] = self.device_bytes(int(source), size)
        self.copies.append(("dtod", size))

    def Stream(self):  # noqa: N802 - pycuda's name
        self.require_context("Stream")
        return StandInStream(self)

    def Event(self):  # noqa: N802 - pycuda's name
        self.require_context("Event")
        return StandInEvent(self)


class StandInGpu:
    """Stands in for pycuda.driver.Device: name, compute capability, retain_primary_context()."""

    def __init__(self, driver: StandInDriver, index: int):
        self._driver, self.index = driver, index

    def name(self):
        return self._driver.gpu_name

    def compute_capability(self):
        return self._driver.capability

    def retain_primary_context(self):
        self._driver.retains += 1
        return StandInContext(self._driver)


class StandInContext:
    """Stands in for the pycuda Context of a retained primary context: push() makes it current in
    the calling thread only."""

    def __init__(self, driver: StandInDriver):
        self._driver = driver

    def push(self):
        self._driver._stack().append(self)


class _Dropped:
    """pycuda objects that destroy themselves through their context (cuStreamDestroy, ...)."""

    def __init__(self, driver: StandInDriver):
        self._driver = driver

    def __del__(self):
        if not self._driver._stack():
            self._driver.leaks.append(f"{type(self).__name__} dropped in thread "
                                      f"{threading.current_thread().name} without its context")


class StandInStream(_Dropped):
    """Stands in for pycuda.driver.Stream."""

    _handles = iter(range(0x5000, 1 << 30, 16))

    def __init__(self, driver):
        super().__init__(driver)
        self.handle = next(self._handles)

    def synchronize(self):
        self._driver.require_context("Stream.synchronize")


class StandInEvent(_Dropped):
    """Stands in for pycuda.driver.Event: record() returns the event; synchronize() is counted."""

    def __init__(self, driver):
        super().__init__(driver)
        self.waited = 0

    def record(self, stream=None):
        self._driver.require_context("Event.record")
        return self

    def synchronize(self):
        self._driver.require_context("Event.synchronize")
        self.waited += 1


class StandInAllocation:
    """Stands in for a pooled device allocation: int() is the pointer."""

    def __init__(self, pointer: int):
        self.pointer = pointer

    def __int__(self):
        return self.pointer


class StandInDevicePool:
    """Stands in for pycuda.tools.DeviceMemoryPool: made, allocating and freeing in a context."""

    def __init__(self, driver: StandInDriver):
        driver.require_context("DeviceMemoryPool")
        self._driver, self.allocations, self.stopped = driver, 0, False

    def allocate(self, nbytes: int):
        self.allocations += 1
        return StandInAllocation(self._driver.allocate(nbytes))

    def stop_holding(self):
        self._driver.require_context("DeviceMemoryPool.stop_holding")
        self.stopped = True


class StandInPinnedPool:
    """Stands in for pycuda.tools.PageLockedMemoryPool: allocate(shape, dtype) gives a host array."""

    def __init__(self, driver: StandInDriver):
        driver.require_context("PageLockedMemoryPool")
        self._driver, self.allocations, self.stopped = driver, 0, False

    def allocate(self, shape, dtype):
        self._driver.require_context("pagelocked allocate")
        self.allocations += 1
        return np.zeros(shape, dtype)

    def stop_holding(self):
        self._driver.require_context("PageLockedMemoryPool.stop_holding")
        self.stopped = True


class StandInSourceModule:
    """Stands in for pycuda.compiler.SourceModule: compiles in the current context, records every
    prepared launch (name, grid, block, stream, args) in `launches`; kernels compute nothing."""

    launches: list = []

    def __init__(self, driver: StandInDriver):
        self._driver = driver

    def __call__(self, source, options=(), no_extern_c=False):
        self._driver.require_context("SourceModule")
        self.options, self.no_extern_c = list(options), no_extern_c
        return self

    def get_function(self, name):
        module = self

        class Function:
            def prepare(self, formats):
                self.formats = formats
                self.run = module.host_kernel(name, formats)
                return self

            def prepared_async_call(self, grid, block, stream, *args):
                module._driver.require_context(f"launch {name}")
                if len(args) != len(self.formats):
                    raise TypeError(f"{name} takes {len(self.formats)} arguments, got {len(args)}")
                module.launches.append((name, grid, block, stream, args))
                if self.run is not None:
                    self.run(grid, block, *(module._driver.host_address(value) if code == "P" else value
                                            for code, value in zip(self.formats, args)))

        return Function()

    def host_kernel(self, name: str, formats: str):
        """What computes a launch of `name`: nothing here (launches are only recorded)."""
        return None


class HostKernelModule(StandInSourceModule):
    """Stands in for pycuda.compiler.SourceModule with kernels that compute: the source it is
    given (kernels.cu) is compiled for the CPU (tests/runtime/host_cuda) into `build_dir`, and a
    prepared launch runs the kernel over its whole grid at once (the stream's work is done when
    the call returns, so every synchronisation the host code does is trivially met). Pointer
    arguments must be device memory of the driver; they are translated to where it lies."""

    def __init__(self, driver: StandInDriver, build_dir: Path):
        super().__init__(driver)
        self._build_dir = build_dir

    def __call__(self, source, options=(), no_extern_c=False):
        from tests.runtime.host_cuda import build

        super().__call__(source, options, no_extern_c)
        self._kernels = build(source, options, self._build_dir)
        return self

    def host_kernel(self, name: str, formats: str):
        return self._kernels.kernel(name, formats)


def pycuda_device(driver: StandInDriver | None = None, index: int = 0, kernels: Path | None = None):
    """A runtime.cuda PycudaDevice over the stand-ins, and its driver and module; with `kernels`
    (a build folder), the module runs the real kernels compiled for the CPU there."""
    from runtime.cuda.device import PycudaDevice

    driver = driver or StandInDriver()
    tools = types.SimpleNamespace(DeviceMemoryPool=lambda: StandInDevicePool(driver),
                                  PageLockedMemoryPool=lambda: StandInPinnedPool(driver))
    module = StandInSourceModule(driver) if kernels is None else HostKernelModule(driver, kernels)
    module.launches = []
    return PycudaDevice(index, driver, tools, module), driver, module


def in_thread(call, *args, **kwargs):
    """`call` run in a new worker thread; its result, or the exception it raised."""
    outcome = {}

    def body():
        try:
            outcome["result"] = call(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    worker = threading.Thread(target=body, name="worker")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


# ------------------------------------------------------------------------------ TensorRT


class StandInTensorRT(types.SimpleNamespace):
    """Stands in for the `tensorrt` module (TensorRT 10): enums, Logger, Runtime, Builder, OnnxParser.

    The runtime network is "keep the first `classes` input channels" on float32 NCHW, so batch
    order and splitting are visible in the output. Deserialising, building, creating contexts and
    executing require a current context, like every TensorRT call that touches the GPU.
    """

    def __init__(self, driver: StandInDriver, version="10.3.0", input_dtype="FLOAT", output_dtype="FLOAT",
                 batch=-1, profile=(1, 1, 8), image=(3, 4, 6), classes=2):
        data_type = types.SimpleNamespace(**{name: name for name in
                                             ("FLOAT", "HALF", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BF16")})
        super().__init__(
            __version__=version, DataType=data_type,
            TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"), Logger=StandInLogger,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
            BuilderFlag=types.SimpleNamespace(TF32="TF32", FP16="FP16", INT8="INT8"))
        self.driver = driver
        self.spec = dict(input_dtype=input_dtype, output_dtype=output_dtype, batch=batch, profile=profile,
                         image=image, classes=classes)
        self.executions: list = []
        self.builds: list = []
        self.Runtime = lambda logger: StandInRuntime(self)
        self.Builder = lambda logger: StandInBuilder(self)
        self.OnnxParser = lambda network, logger: StandInParser(self, network)


class StandInLogger:
    """Stands in for tensorrt.Logger."""

    WARNING = "WARNING"

    def __init__(self, severity=None):
        self.severity = severity


class StandInRuntime:
    """Stands in for tensorrt.Runtime: deserialize_cuda_engine needs a current context."""

    def __init__(self, trt: StandInTensorRT):
        self._trt = trt

    def deserialize_cuda_engine(self, plan: bytes):
        self._trt.driver.require_context("deserialize_cuda_engine")
        return StandInEngine(self._trt) if plan == b"plan" else None


class StandInEngine:
    """Stands in for tensorrt.ICudaEngine with one input 'input' and one output 'output'."""

    def __init__(self, trt: StandInTensorRT):
        self._trt, self.spec = trt, trt.spec
        self.num_io_tensors = 2

    def get_tensor_name(self, index):
        return ("input", "output")[index]

    def get_tensor_mode(self, name):
        return self._trt.TensorIOMode.INPUT if name == "input" else self._trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.spec["input_dtype" if name == "input" else "output_dtype"]

    def get_tensor_shape(self, name):
        height, width = self.spec["image"][1:]
        rest = self.spec["image"] if name == "input" else (self.spec["classes"], height, width)
        return (self.spec["batch"], *rest)

    def get_tensor_profile_shape(self, name, profile_index):
        if profile_index != 0 or self.spec["batch"] > 0:
            raise RuntimeError("no such profile")
        return [(n, *self.spec["image"]) for n in self.spec["profile"]]

    def create_execution_context(self):
        self._trt.driver.require_context("create_execution_context")
        execution = StandInExecution(self._trt, self)
        self._trt.executions.append(execution)
        return execution


class StandInExecution:
    """Stands in for tensorrt.IExecutionContext (TensorRT 10 name-based I/O).

    set_input_shape returns False for a batch outside the profile (and the output shape stays -1,
    as TensorRT leaves it); execute_async_v3 needs a current context, addresses for both tensors
    and, for a dynamic engine, an input shape; it records the batch size of every run.
    """

    def __init__(self, trt: StandInTensorRT, engine: StandInEngine):
        self._trt, self._engine = trt, engine
        self.input_shape = engine.get_tensor_shape("input") if engine.spec["batch"] > 0 else None
        self.addresses: dict[str, int] = {}
        self.batches: list[int] = []
        self.inputs_seen: list[int] = []
        self.outputs_seen: list[int] = []

    def set_input_shape(self, name, shape):
        low, _, high = self._engine.spec["profile"]
        if name != "input" or not low <= shape[0] <= high:
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        shape = self._engine.get_tensor_shape(name)
        return shape if self.input_shape is None else (self.input_shape[0], *shape[1:])

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = int(pointer)
        return True

    def execute_async_v3(self, stream_handle):
        self._trt.driver.require_context("execute_async_v3")
        if self.input_shape is None or set(self.addresses) != {"input", "output"}:
            return False
        batch, channels, height, width = self.input_shape
        classes = self._engine.spec["classes"]
        count = batch * channels * height * width
        driver = self._trt.driver
        images = driver.device_bytes(self.addresses["input"], count * 4).view(np.float32)
        images = images.reshape(self.input_shape)
        out = driver.device_bytes(self.addresses["output"], batch * classes * height * width * 4).view(np.float32)
        out[:] = images[:, :classes].reshape(-1)
        self.batches.append(batch)
        self.inputs_seen.append(self.addresses["input"])
        self.outputs_seen.append(self.addresses["output"])
        return True


class StandInTimingCache:
    """Stands in for tensorrt.ITimingCache; a cache this build made serialises as b"timing:this-gpu"."""

    def __init__(self, blob: bytes):
        self.blob = bytes(blob)

    def serialize(self):
        return self.blob or b"timing:this-gpu"


class StandInBuilderConfig:
    """Stands in for tensorrt.IBuilderConfig. TF32 is on by default, as in TensorRT; a timing cache
    from another GPU or TensorRT version (a blob not made here) is refused by set_timing_cache
    unless ignore_mismatch, as the documentation says."""

    def __init__(self, trt: StandInTensorRT, refuse_fresh_cache=False, return_no_cache=False):
        self._trt = trt
        self.flags = {"TF32"}
        self.timing_cache = None
        self.cache_attempts: list[bytes] = []
        self.refuse_fresh_cache, self.return_no_cache = refuse_fresh_cache, return_no_cache
        self.profiles, self.int8_calibrator = [], None

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def create_timing_cache(self, blob):
        return StandInTimingCache(blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache_attempts.append(cache.blob)
        accepted = cache.blob in (b"", b"timing:this-gpu") or ignore_mismatch
        if cache.blob == b"" and self.refuse_fresh_cache:
            accepted = False
        if accepted:
            self.timing_cache = cache
        return accepted

    def get_timing_cache(self):
        return None if self.return_no_cache else self.timing_cache


class StandInNetwork:
    def __init__(self, batch):
        self._input = types.SimpleNamespace(name="input", shape=(batch, 3, 4, 6))

    def get_input(self, index):
        return self._input


class StandInParser:
    """Stands in for tensorrt.OnnxParser: parse_from_file needs the path of an existing model file."""

    def __init__(self, trt: StandInTensorRT, network):
        self._trt, self.num_errors = trt, 0

    def parse_from_file(self, path):
        self._trt.builds.append(("parse_from_file", path))
        if not Path(path).is_file():
            self.num_errors = 1
            return False
        return True

    def get_error(self, index):
        return "not a model file"


class StandInBuilder:
    """Stands in for tensorrt.Builder; building needs a current context and gives b'plan'."""

    def __init__(self, trt: StandInTensorRT):
        self._trt = trt

    def create_network(self, flags):
        return StandInNetwork(self._trt.spec["batch"])

    def create_builder_config(self):
        config = StandInBuilderConfig(self._trt, **self._trt.spec.get("config", {}))
        self._trt.builds.append(("config", config))
        return config

    def create_optimization_profile(self):
        profile = types.SimpleNamespace(shapes={})
        profile.set_shape = lambda name, low, opt, high: profile.shapes.update({name: (low, opt, high)})
        return profile

    def build_serialized_network(self, network, config):
        self._trt.driver.require_context("build_serialized_network")
        return b"plan"


# ------------------------------------------------------------------------------ ONNX Runtime


class StandInSession:
    """Stands in for onnxruntime.InferenceSession with GPU providers on a machine with TensorRT
    and CUDA. Model queries and CPU runs go to a real CPU session of the same file.

    Contract, as ONNX Runtime behaves: when a provider fails to start, the session prints an "EP
    Error" and falls back (TensorRT -> CUDA + CPU without options; others -> CPU), so
    get_providers() is what runs. The TensorRT provider fails when its cache folder's parent
    does not exist (it creates the folder without parents), or when `tensorrt_missing`.
    """

    tensorrt_missing = False
    created: list = []

    def __init__(self, path, options=None, providers=(), provider_options=()):
        self.requested = list(providers)
        self.options = list(provider_options)
        self._cpu = REAL_SESSION(path, options, providers=["CPUExecutionProvider"])
        self._providers = self._start(self.requested, self.options)
        self.bindings: list[StandInBinding] = []
        StandInSession.created.append(self)

    def _start(self, providers, options):
        running = []
        for provider, option in zip(providers, options):
            if provider == "TensorrtExecutionProvider":
                cache = Path(option.get("trt_engine_cache_path", "."))
                if self.tensorrt_missing or not cache.parent.is_dir():
                    return ["CUDAExecutionProvider", "CPUExecutionProvider"]  # the EP Error fallback
                cache.mkdir(exist_ok=True)
            running.append(provider)
        return running

    def get_providers(self):
        return list(self._providers)

    def __getattr__(self, name):  # get_modelmeta, get_inputs, get_outputs, run, get_session_options
        return getattr(self._cpu, name)

    def io_binding(self):
        self.bindings.append(StandInBinding())
        return self.bindings[-1]

    def run_with_iobinding(self, binding):
        binding.check_complete()
        binding.ran = True


class StandInBinding:
    """Stands in for onnxruntime.IOBinding on device buffers: records bind_input / bind_output
    arguments; a run needs both bound; outputs are read only after synchronize_outputs."""

    def __init__(self):
        self.inputs, self.outputs, self.ran, self.synchronized = {}, {}, False, False

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        self.inputs[name] = (device_type, device_id, np.dtype(element_type), tuple(shape), int(buffer_ptr))

    def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None):
        self.outputs[name] = (device_type, device_id, np.dtype(element_type), tuple(shape), int(buffer_ptr))

    def check_complete(self):
        if not self.inputs or not self.outputs:
            raise RuntimeError("run_with_iobinding: inputs and outputs must be bound")

    def synchronize_outputs(self):
        if not self.ran:
            raise RuntimeError("synchronize_outputs before run_with_iobinding")
        self.synchronized = True



# ------------------------------------------------------------------------------ an engine on the stand-in device


class StandInDeviceEngine(Engine):
    """Stands in for a TensorRT engine of a segmentation network on the stand-in device: a fixed
    per-pixel linear classifier of the normalised RGB input (average-pooled over 4 x 4 cells for
    lowres_logits, arg-maxed for labels), in NumPy. infer_device reads and writes the emulated
    device memory, infer host arrays, so the CPU and GPU frame paths run the very same network."""

    name, on_device, path = "tensorrt", True, Path("stand-in.engine")

    def __init__(self, contract, device, driver: StandInDriver, logits_dtype=np.float32, seed=0):
        self.contract, self._device, self._driver, self._logits_dtype = contract, device, driver, logits_dtype
        rng = np.random.default_rng(seed)
        self.weight = rng.standard_normal((len(contract.classes), 3)).astype(np.float32)
        self.bias = rng.standard_normal(len(contract.classes)).astype(np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        images = batch.astype(np.float32)
        if self.contract.input_layout == "nhwc_uint8":  # normalised in-graph
            mean, std = np.float32(self.contract.mean), np.float32(self.contract.std)
            images = ((images / np.float32(255) - mean) / std).transpose(0, 3, 1, 2)
        logits = np.einsum("kc,nchw->nkhw", self.weight, images) + self.bias[:, None, None]
        if self.contract.output_kind == "lowres_logits":
            n, k, h, w = logits.shape
            logits = logits.reshape(n, k, h // 4, 4, w // 4, 4).mean(axis=(3, 5))
        if self.contract.output_kind == "labels":
            return np.argmax(logits, axis=1).astype(np.uint8)
        return logits.astype(self._logits_dtype)

    def infer(self, batch):
        return self._run(check_batch(self.contract, batch))

    def infer_device(self, batch):
        pointer, shape, dtype = self.device_batch(batch)
        images = self._driver.device_bytes(pointer, int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)
        result = np.ascontiguousarray(self._run(images))
        out = self._device.empty(result.shape, result.dtype)
        self._driver.device_bytes(out.pointer, result.nbytes)[:] = result.reshape(-1).view(np.uint8)
        return out
