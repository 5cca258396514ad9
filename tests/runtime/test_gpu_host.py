"""The host side of the GPU code (runtime.cuda, the TensorRT and ONNX Runtime engines' device
handling, the GPU frame path) against stand-ins of pycuda, TensorRT and ONNX Runtime that
enforce their documented contracts; see tests/runtime/cuda_standins.py. Runs without a GPU.
"""
from __future__ import annotations

import sys
import weakref

import numpy as np
import onnxruntime
import pytest

from runtime.contract import ModelContract
from runtime.cuda import device as device_module
from runtime.cuda.device import DeviceArray, array_view
from runtime.cuda.ops import COMPILE_OPTIONS, CudaOps
from runtime.engines import EngineError, open_engine
from runtime.engines.onnxruntime_engine import CPU_EP, CUDA_EP, TENSORRT_EP
from runtime.engines.sidecar import EngineSidecar, write_sidecar
from runtime.gpu_path import GpuProcessor
from runtime.ops import OpsInputError
from runtime.pipeline import run_pipeline
from runtime.video import Sink
from tests.runtime.cuda_standins import (StandInCudaError, StandInSession, StandInTensorRT, in_thread,
                                         pycuda_device)
from tests.runtime.test_engines import CONTRACT, tiny_onnx

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ------------------------------------------------------------------------------ device arrays


def test_device_array_items_and_reshapes_are_views_at_hand_computed_offsets():
    device, _, _ = pycuda_device()
    batch = device.empty((2, 3, 4, 6), np.float32)
    second = batch[1]
    assert second.pointer == batch.pointer + 3 * 4 * 6 * 4  # one image of float32 further
    assert second.shape == (3, 4, 6) and second.nbytes == 288
    assert second.reshape((1, 3, 4, 6)).pointer == second.pointer
    with pytest.raises(ValueError, match="cannot reshape"):
        second.reshape((2, 3, 4, 6))
    with pytest.raises(IndexError):
        batch[2]


def test_array_view_reads_any_cuda_array_and_refuses_strided_ones():
    class Strided:
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (4096, False),
                                    "strides": (4, 16), "version": 3}

    class Packed:
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f4", "data": (4096, False),
                                    "strides": (12, 4), "version": 3}

    assert array_view(Packed()) == (4096, (4, 3), np.dtype(np.float32))
    with pytest.raises(TypeError, match="not C-contiguous"):
        array_view(Strided())
    with pytest.raises(TypeError, match="ndarray, not a device array"):
        array_view(np.zeros(3))


# ------------------------------------------------------------------------------ contexts


def test_stand_in_refuses_work_where_no_context_is_current():
    _, driver, _ = pycuda_device()
    with pytest.raises(StandInCudaError, match="invalid device context"):
        in_thread(driver.Stream)


def test_primary_context_is_retained_once_for_every_device_object():
    _, driver, _ = pycuda_device()
    pycuda_device(driver)
    assert driver.retains == 1


def test_ops_made_in_one_thread_run_in_another():
    device, driver, module = pycuda_device()
    ops = CudaOps(device)
    logits = np.zeros((2, 3, 5), np.float32)

    def call():
        labels = ops.argmax(logits)
        return labels, driver.current_depth()

    labels, depth_after = in_thread(call)
    assert labels.shape == (3, 5) and depth_after == 0  # the worker's context stack is left as found
    name, grid, block, _, args = module.launches[-1]
    assert name == "argmax_f32" and grid == (1, 1, 1) and block == (256, 1, 1)
    assert args[1:3] == (2, 15)  # classes, pixels
    launched_in = [thread for call_name, thread in driver.calls if call_name == "launch argmax_f32"]
    assert launched_in == ["worker"]
    assert module.options == list(COMPILE_OPTIONS) == ["--fmad=false"] and module.no_extern_c


def test_host_inputs_go_through_bounded_pinned_staging():
    device, driver, _ = pycuda_device()
    ops = CudaOps(device)
    frames = [np.full((6, 8, 3), i, np.uint8) for i in range(12)]
    for frame in frames:
        stream = device.new_stream()  # one stream per frame used to grow the uploads without bound
        result = ops.preprocess(frame, (4, 6), MEAN, STD, stream=stream)
        assert result.shape == (3, 4, 6)
    pinned = device._pinned_pool.allocations
    assert pinned == 4  # the staging slots for this shape, reused round robin
    slot = ops._staging._rings[((6, 8, 3), "|u1")][-1]
    np.testing.assert_array_equal(driver.device_bytes(slot.device.pointer, 6 * 8 * 3), frames[-1].reshape(-1))
    assert slot.done is not None  # busy until the kernel that reads it has run


def test_a_reused_staging_slot_waits_for_its_last_reader():
    device, _, _ = pycuda_device()
    ops = CudaOps(device)
    frame = np.zeros((6, 8, 3), np.uint8)
    for _ in range(4):
        ops.preprocess(frame, (4, 6), MEAN, STD)
    first_event = ops._staging._rings[((6, 8, 3), "|u1")][0].done
    ops.preprocess(frame, (4, 6), MEAN, STD)  # the fifth upload takes the first slot again
    assert first_event.waited == 1


def test_ops_refuse_what_is_not_a_device_array():
    ops = CudaOps(pycuda_device()[0])
    with pytest.raises(OpsInputError, match="argmax: logits is a list, not a device array"):
        ops.argmax([[[1.0]]])
    with pytest.raises(OpsInputError, match=r"out must be a C-contiguous uint8 device array of shape \(3, 5\)"):
        ops.argmax(np.zeros((2, 3, 5), np.float32), out=ops.device.empty((3, 4), np.uint8))


def test_device_closes_from_another_thread_with_its_context():
    device, driver, _ = pycuda_device()
    in_thread(device.close)
    assert device._pool.stopped and device._pinned_pool.stopped and driver.leaks == []
    device.close()  # a second close does nothing


# ------------------------------------------------------------------------------ TensorRT engine


@pytest.fixture
def tensorrt_here(monkeypatch, tmp_path):
    """A TensorRT stand-in and a stand-in CUDA device behind open_engine; returns a factory of
    (engine path, TensorRT stand-in, driver) for a given engine spec."""

    def make(contract=CONTRACT, **spec):
        device, driver, _ = pycuda_device()
        trt = StandInTensorRT(driver, **spec)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(device_module, "open_device", lambda index=0, library="auto": device)
        path = tmp_path / "m.engine"
        path.write_bytes(b"plan")
        write_sidecar(path, EngineSidecar(tensorrt_version="10.3.0", gpu_name="NVIDIA H200",
                                          compute_capability=(9, 0), precision=contract.precision,
                                          contract=contract))
        return path, trt, driver

    return make


def images(count: int) -> np.ndarray:
    return np.arange(count * 3 * 4 * 6, dtype=np.float32).reshape(count, 3, 4, 6)


def test_dynamic_engine_splits_a_batch_by_its_profile_maximum(tensorrt_here):
    path, trt, _ = tensorrt_here(profile=(1, 1, 8))
    batch = images(20)
    with open_engine(path) as engine:
        got = engine.infer(batch)
    assert trt.executions[0].batches == [8, 8, 4]
    np.testing.assert_array_equal(got, batch[:, :2])  # the stand-in network keeps two channels, in order


def test_fixed_batch_engine_takes_exact_multiples(tensorrt_here):
    path, trt, _ = tensorrt_here(batch=4)
    with open_engine(path) as engine:
        np.testing.assert_array_equal(engine.infer(images(8)), images(8)[:, :2])
        with pytest.raises(EngineError, match="takes batches of exactly 4; got 6"):
            engine.infer(images(6))
    assert trt.executions[0].batches == [4, 4]


def test_refused_input_shape_is_an_engine_error(tensorrt_here):
    path, _, _ = tensorrt_here(profile=(2, 2, 8))
    with open_engine(path) as engine:
        with pytest.raises(EngineError, match=r"refused input shape \(1, 3, 4, 6\).*batches of 2 to 8"):
            engine.infer(images(1))


@pytest.mark.parametrize("contract, spec, message", [
    (CONTRACT, dict(input_dtype="HALF"), r"takes float16 input, its contract \(nchw_float\) says float32"),
    (CONTRACT, dict(output_dtype="BF16"), "gives BF16 logits, the runtime takes float32 or float16"),
    (ModelContract(**{**CONTRACT.__dict__, "output_kind": "labels"}), dict(output_dtype="INT64"),
     "gives int64 labels, the runtime takes uint8 or int32"),
])
def test_engine_types_are_checked_when_it_opens(tensorrt_here, contract, spec, message):
    path, _, driver = tensorrt_here(contract=contract, **spec)
    with pytest.raises(EngineError, match=message):
        open_engine(path)
    assert driver.leaks == []


def test_fp16_logits_are_accepted(tensorrt_here):
    path, _, _ = tensorrt_here(output_dtype="HALF")
    with open_engine(path) as engine:
        assert engine._output_dtype == np.float16


def test_engine_runs_and_closes_from_worker_threads(tensorrt_here):
    path, trt, driver = tensorrt_here()
    engine = open_engine(path)
    np.testing.assert_array_equal(in_thread(engine.infer, images(2)), images(2)[:, :2])
    stream = weakref.ref(engine._stream)
    in_thread(engine.close)
    assert stream() is None, "the stream outlived close()"
    assert driver.leaks == [] and engine._cuda is None
    engine.close()  # a second close does nothing


def test_device_inference_reads_and_writes_device_buffers(tensorrt_here):
    path, trt, driver = tensorrt_here()
    with open_engine(path) as engine:
        batch = engine._cuda.to_device(images(1))
        output = engine.infer_device(batch)
        assert isinstance(output, DeviceArray) and output.shape == (1, 2, 4, 6)
        execution = trt.executions[0]
        assert execution.addresses == {"input": batch.pointer, "output": output.pointer}
        np.testing.assert_array_equal(output.get(), images(1)[:, :2])
        with pytest.raises(EngineError, match=r"device input batch is float32 \(1, 4, 6, 3\)"):
            engine.infer_device(engine._cuda.empty((1, 4, 6, 3), np.float32))


# ------------------------------------------------------------------------------ ONNX Runtime engine


@pytest.fixture
def gpu_onnxruntime(monkeypatch):
    """ONNX Runtime as on a GPU machine with the TensorRT and CUDA providers (StandInSession)."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [TENSORRT_EP, CUDA_EP, CPU_EP])
    monkeypatch.setattr(onnxruntime, "InferenceSession", StandInSession)
    monkeypatch.setattr(StandInSession, "tensorrt_missing", False)
    monkeypatch.setattr(StandInSession, "created", [])
    return StandInSession


def test_tensorrt_provider_cache_folder_is_created(tmp_path, gpu_onnxruntime):
    cache = tmp_path / "deep" / "cache" / "trt"
    with open_engine(tiny_onnx(tmp_path / "m.onnx"), trt_cache_dir=cache, device=1) as engine:
        assert engine.providers[0] == TENSORRT_EP
    assert cache.is_dir()
    options = gpu_onnxruntime.created[0].options
    assert options[0]["trt_engine_cache_path"] == str(cache) and options[0]["device_id"] == 1
    assert options[1] == {"device_id": 1} and options[2] == {}


def test_a_named_provider_that_falls_back_is_refused(tmp_path, gpu_onnxruntime):
    gpu_onnxruntime.tensorrt_missing = True
    with pytest.raises(EngineError, match=f"could not start {TENSORRT_EP}.*fell back to {CUDA_EP}"):
        open_engine(tiny_onnx(tmp_path / "m.onnx"), providers="tensorrt", trt_cache_dir=tmp_path / "c")


def test_auto_accepts_the_next_provider_and_says_so(tmp_path, gpu_onnxruntime):
    gpu_onnxruntime.tensorrt_missing = True
    with open_engine(tiny_onnx(tmp_path / "m.onnx"), trt_cache_dir=tmp_path / "c") as engine:
        info = engine.describe()
    assert info["provider"] == CUDA_EP and info["providers_requested"][0] == TENSORRT_EP


def test_onnxruntime_device_inference_binds_device_pointers(tmp_path, gpu_onnxruntime, monkeypatch):
    device, _, _ = pycuda_device()
    monkeypatch.setattr(device_module, "open_device", lambda index=0, library="auto": device)
    with open_engine(tiny_onnx(tmp_path / "m.onnx"), providers="cuda") as engine:
        batch = device.empty((1, 3, 4, 6), np.float32)
        output = engine.infer_device(batch)
        (binding,) = engine.session.bindings
    assert binding.inputs["input"] == ("cuda", 0, np.dtype(np.float32), (1, 3, 4, 6), batch.pointer)
    assert binding.outputs["output"] == ("cuda", 0, np.dtype(np.float32), (1, 2, 4, 6), output.pointer)
    assert binding.ran and binding.synchronized


# ------------------------------------------------------------------------------ GPU frame path


class OverlaySink(Sink):
    needs_overlay = True
    needs_labels = False

    def __init__(self):
        self.overlays = []

    def write(self, index, overlay, labels):
        self.overlays.append(overlay.copy())

    def close(self):
        pass

    def abort(self):
        pass


def test_frame_path_uploads_once_stays_on_the_device_and_downloads_once(tensorrt_here):
    path, trt, driver = tensorrt_here()
    frames = [np.random.default_rng(i).integers(0, 256, (8, 10, 3), dtype=np.uint8) for i in range(5)]
    sink = OverlaySink()
    with open_engine(path) as engine:
        ops_device, _, module = pycuda_device(driver)
        processor = GpuProcessor(engine, ops=CudaOps(ops_device))
        stats = run_pipeline(enumerate(frames), processor, [sink])
        processor.close()
    frame_bytes = 8 * 10 * 3
    assert stats.frames_out == 5
    assert driver.copies.count(("htod", frame_bytes)) == 5  # one upload per frame
    assert driver.copies.count(("dtoh", frame_bytes)) == 5  # one overlay download per frame
    assert driver.copies.count(("dtoh", 1)) == 5  # and the one-byte inf/NaN flag of its logits
    assert not [c for c in driver.copies if c[0] == "dtoh" and c[1] not in (frame_bytes, 1)]  # nothing else comes back
    preprocessed = {args[-1] for name, *_, args in module.launches if name == "preprocess_nchw_f32"}
    runs = trt.executions[0]
    assert set(runs.inputs_seen) == preprocessed  # the engine read the preprocess outputs where they lie
    argmax_inputs = {args[0] for name, *_, args in module.launches if name == "argmax_f32"}
    assert argmax_inputs == set(runs.outputs_seen)  # and its logits went straight to the argmax
    # The stand-in kernels compute nothing, so the overlay is the uploaded frame coming back.
    for got, frame in zip(sink.overlays, frames):
        np.testing.assert_array_equal(got, frame)
    assert driver.leaks == []


def test_frame_path_needs_an_engine_on_the_device(tmp_path):
    with open_engine(tiny_onnx(tmp_path / "m.onnx")) as engine:  # CPU provider
        with pytest.raises(EngineError, match="runs m.onnx on the host.*--device cpu"):
            GpuProcessor(engine, ops=CudaOps(pycuda_device()[0]))


def test_segment_device_cuda_with_a_host_engine_stops_in_one_line(tmp_path, capsys):
    import cv2

    from runtime import segment

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "000000.png"), np.zeros((8, 10, 3), np.uint8))
    code = segment.main(["--model", str(tiny_onnx(tmp_path / "m.onnx")), "--source", str(frames), "--device", "cuda",
                         "--out", str(tmp_path / "overlay.mp4"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "runs m.onnx on the host" in err[0] and "--device cpu" in err[0]
    assert not (tmp_path / "overlay.mp4").exists()


def test_rig_batches_are_gathered_on_the_device_and_split_back_as_views(tensorrt_here):
    path, trt, driver = tensorrt_here(profile=(1, 1, 8))
    with open_engine(path) as engine:
        ops_device, _, _ = pycuda_device(driver)
        processor = GpuProcessor(engine, ops=CudaOps(ops_device))
        inputs = [engine._cuda.to_device(images(3)[index:index + 1]) for index in range(3)]
        driver.copies.clear()
        outputs = processor.infer_batch(inputs)
        assert trt.executions[0].batches == [3]  # one inference for the three cameras
        image_bytes = 3 * 4 * 6 * 4
        assert driver.copies == [("dtod", image_bytes)] * 3  # gathered on the device, nothing through the host
        assert [output.shape for output in outputs] == [(1, 2, 4, 6)] * 3
        for index, output in enumerate(outputs):  # the stand-in network keeps two channels
            np.testing.assert_array_equal(output.get(), images(3)[index:index + 1, :2])
        processor.close()
    assert driver.leaks == []


def test_rig_of_two_cameras_runs_the_gpu_frame_path(tensorrt_here):
    from runtime.pipeline import Camera, run_rig

    path, trt, driver = tensorrt_here(profile=(1, 1, 8))
    frames = [np.random.default_rng(i).integers(0, 256, (8, 10, 3), dtype=np.uint8) for i in range(4)]
    sinks = [OverlaySink(), OverlaySink()]
    with open_engine(path) as engine:
        processor = GpuProcessor(engine, ops=CudaOps(pycuda_device(driver)[0]))
        stats = run_rig([Camera(enumerate(frames), [sinks[0]], name="a"),
                         Camera(enumerate(frames[::-1]), [sinks[1]], name="b")], processor)
        processor.close()
    assert [stats.cameras[name].frames_out for name in "ab"] == [4, 4]
    assert sum(trt.executions[0].batches) == 8 and stats.frames_inferred == 8
    for got, frame in zip(sinks[0].overlays + sinks[1].overlays, frames + frames[::-1]):
        np.testing.assert_array_equal(got, frame)  # each overlay went back to its own camera, in order
    assert driver.leaks == []
