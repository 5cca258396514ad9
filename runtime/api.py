"""The Python interface a vehicle stack embeds (a ROS 2 node, a service): open an artefact once,
then segment frames one at a time or in batches, render overlays and read the model contract.

    from runtime.api import Segmenter

    with Segmenter("models/export/gen_student_int8.onnx") as segmenter:
        labels = segmenter.segment(frame_bgr)            # uint8 trainIds, frame size
        overlay = segmenter.overlay(frame_bgr, labels)

`runtime/segment.py` is a command line over this class: it opens the model through it and runs
its `processor` in the stream pipeline, so an embedding and the command line give the same labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from runtime import ops
from runtime.contract import ModelContract
from runtime.engines import BACKEND_BY_SUFFIX, open_engine
from runtime.gpu_path import open_processor
from runtime.pipeline import ThreadBudget, thread_budget

# Engines that run on the host's cores and so take a share of the thread budget.
THREADED_BACKENDS = ("onnxruntime", "torch")


class Segmenter:
    """An exported model ready to segment BGR frames (uint8 HxWx3, any size).

    `device` "cpu" runs the C ops on the host, "cuda" the GPU frame path. `threads` and
    `op_threads` split the cores between the engine and the ops (runtime.pipeline.thread_budget;
    the ops' count is process-wide). `letterbox` ("auto", "on", "off") keeps a frame's aspect
    ratio inside the network input. Not thread-safe: one caller at a time, as in a node's callback.
    Errors a user can cause are EngineError / ContractError with a one-line message.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu", threads: int | None = None, *,
                 op_threads: int | None = None, letterbox: str = "auto", alpha: float = 0.5,
                 backend: str = "auto"):
        self.model_path = Path(model_path)
        kind = BACKEND_BY_SUFFIX.get(self.model_path.suffix) if backend == "auto" else backend
        self.threads: ThreadBudget = thread_budget(threads, op_threads, cpu_inference=kind in THREADED_BACKENDS)
        ops.set_num_threads(self.threads.ops)
        extra = {"threads": self.threads.inference} if self.threads.inference is not None else {}
        self.engine = open_engine(self.model_path, backend=backend, **extra)
        try:
            self.processor = open_processor(self.engine, device, alpha=alpha)
            self.processor.letterbox = letterbox
        except BaseException:
            self.engine.close()
            raise

    @property
    def contract(self) -> ModelContract:
        """Class names, RGB palette, input size and layout the artefact was exported with."""
        return self.engine.contract

    def segment(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The uint8 trainId map of one frame, at the frame's size."""
        return self.segment_batch([frame_bgr])[0]

    def segment_batch(self, frames_bgr: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The label maps of several frames (of any sizes) from one inference where the engine
        takes a batch: a rig's cameras at one instant cost about one frame's inference."""
        processor = self.processor
        images = [processor.upload(frame) for frame in frames_bgr]
        outputs = processor.infer_batch([processor.preprocess(image) for image in images])
        return [processor.frame_labels(processor.postprocess(output, image.shape[:2])[0], image.shape[:2])
                for output, image in zip(outputs, images)]

    def overlay(self, frame_bgr: np.ndarray, labels: np.ndarray, alpha: float | None = None) -> np.ndarray:
        """The frame with the labels' palette colours blended in at `alpha` (default: the one given
        at construction)."""
        if alpha is None:
            return self.processor.render(frame_bgr, labels)
        previous, self.processor.alpha = self.processor.alpha, float(alpha)
        try:
            return self.processor.render(frame_bgr, labels)
        finally:
            self.processor.alpha = previous

    def describe(self) -> dict:
        """The engine's backend and provider, for run summaries."""
        return self.engine.describe()

    def close(self) -> None:
        """Free the engine (and the GPU frame path's device buffers)."""
        close = getattr(self.processor, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self.engine.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
