"""The GPU frame path against the CPU path on a real GPU, through each engine that runs on it."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.cuda.device import CudaUnavailableError, open_device
from runtime.engines import open_engine
from runtime.gpu_path import GpuProcessor
from runtime.pipeline import Processor, run_pipeline
from runtime.video import Sink
from tests.runtime.test_engines import tiny_onnx

pytestmark = pytest.mark.gpu


class KeepAll(Sink):
    needs_overlay = needs_labels = True

    def __init__(self):
        self.frames = []

    def write(self, index, overlay, labels):
        self.frames.append((overlay.copy(), labels.copy()))


def gpu_engine(kind: str, tmp_path):
    try:
        open_device().close()
    except CudaUnavailableError as exc:
        pytest.skip(str(exc))
    model = tiny_onnx(tmp_path / "m.onnx")
    if kind == "onnxruntime":
        ort = pytest.importorskip("onnxruntime")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return open_engine(model, providers="cuda")
    pytest.importorskip("tensorrt")
    from export.tensorrt import build_engine

    build_engine(model, tmp_path / "m.engine", precision="fp32", workspace_mb=256)
    return open_engine(tmp_path / "m.engine")


@pytest.mark.parametrize("kind", ["onnxruntime", "tensorrt"])
def test_gpu_frame_path_gives_the_cpu_paths_labels_and_overlays(kind, tmp_path):
    frames = [np.random.default_rng(i).integers(0, 256, (37, 53, 3), dtype=np.uint8) for i in range(6)]
    cpu, gpu = KeepAll(), KeepAll()
    with gpu_engine(kind, tmp_path) as engine:
        run_pipeline(enumerate(frames), Processor(engine), [cpu])
        processor = GpuProcessor(engine)
        stats = run_pipeline(enumerate(frames), processor, [gpu])
        processor.close()
    assert stats.frames_out == 6 and all(stats.latency_ms["postprocess"])
    for (cpu_overlay, cpu_labels), (gpu_overlay, gpu_labels) in zip(cpu.frames, gpu.frames):
        # Same engine both ways; preprocess rounding could only tip an exact tie.
        assert np.mean(cpu_labels == gpu_labels) >= 0.999
        assert np.mean(np.all(cpu_overlay == gpu_overlay, axis=2)) >= 0.999
