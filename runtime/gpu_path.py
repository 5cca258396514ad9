"""The GPU frame path: frames are decoded on the host and everything after the upload stays on the device.

Per frame: the decoded frame is copied into a pinned buffer and uploaded once; the CUDA
preprocess writes the network input into a device buffer that the engine reads where it lies
(TensorRT tensor addresses, ONNX Runtime I/O binding); the logits stay on the device for the
fused upsample + argmax and the blend, which paints into the uploaded frame; the overlay comes
back in one download (the labels too, only when a sink asks for them). Letterboxing is the CPU
path's (Processor.region): the preprocess fills the frame's region of the input and pads it with
the mean colour, and the padding is cut off the outputs by the tables that read them, not by a copy.

GpuProcessor has Processor's stage methods, so run_pipeline and run_rig drive it unchanged; a rig's
frames are gathered into one device batch by device-to-device copies and the outputs handed back
as views of the batch's. Each method
waits for its stream before returning: the next stage, in another thread, reads finished
buffers, and the pipeline's per-stage times include the GPU work the stage queued.
`segment.py --device cuda` selects it; the CPU path stays the default.
"""
from __future__ import annotations

import collections
import threading
from typing import NamedTuple

import numpy as np

from runtime.cuda.device import CudaUnavailableError, array_view, open_device
from runtime.cuda.ops import CudaOps
from runtime.engines import input_spec
from runtime.engines.base import Engine, EngineError
from runtime.pipeline import Processor

DEVICES = ("cpu", "cuda")


class CroppedLabels(NamedTuple):
    """Device labels of the whole network input and the rectangle (top, left, height, width) of
    them that covers the frame: a letterboxed frame's labels, its padding left where it lies."""

    labels: object
    box: tuple[int, int, int, int]


def open_processor(engine: Engine, device: str = "cpu", *, alpha: float = 0.5) -> Processor:
    """The stage work for `device`: the C ops on the host, or the GPU frame path."""
    return GpuProcessor(engine, alpha=alpha) if device == "cuda" else Processor(engine, alpha=alpha)


class GpuProcessor(Processor):
    """Processor on one CUDA device: frames, network inputs, logits and labels are device arrays."""

    # Frame sizes whose pinned upload buffer is kept (an image folder may mix sizes).
    STAGING_SIZES = 2

    def __init__(self, engine: Engine, *, alpha: float = 0.5, ops: CudaOps | None = None, device_index: int = 0):
        super().__init__(engine, alpha=alpha)
        if not engine.on_device:
            raise engine.host_only_error()
        try:
            self.ops = ops if ops is not None else CudaOps(open_device(device_index))
        except CudaUnavailableError as exc:
            raise EngineError(f"the GPU frame path cannot start: {exc}") from None
        self.device = self.ops.device
        self._input_dtype, self._input_shape = input_spec(self.contract)
        self._upload_stream, self._pre_stream, self._post_stream, self._gather_stream = (
            self.device.new_stream() for _ in range(4))
        self._staging: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self._upload_lock = threading.Lock()  # the preprocess stage uploads; a caller of render may too
        self._boxes: dict[tuple, tuple[int, int, int, int]] = {}

    def upload(self, frame_bgr: np.ndarray):
        """The frame on the device, through a pinned buffer of its size (one host copy, one DMA);
        the buffer is free for the next frame when this returns."""
        if not isinstance(frame_bgr, np.ndarray):
            return frame_bgr  # already uploaded
        with self._upload_lock:
            staging = self._staging.pop(frame_bgr.shape, None)
            if staging is None:
                staging = self.device.pinned_empty(frame_bgr.shape, np.uint8)
            self._staging[frame_bgr.shape] = staging
            while len(self._staging) > self.STAGING_SIZES:
                self._staging.popitem(last=False)
            np.copyto(staging, frame_bgr, casting="no")
            device_frame = self.device.empty(frame_bgr.shape, np.uint8)
            self.device.copy_to_device(device_frame.pointer, staging, self._upload_stream)
            self.device.synchronize(self._upload_stream)
        return device_frame

    def preprocess(self, frame_bgr, out=None):
        """The network input batch (1, ...) on the device, written into `out` (an input given back
        by an earlier frame) when there is one."""
        frame = self.upload(frame_bgr)
        if out is None:
            out = self.device.empty(self._input_shape, self._input_dtype)
        self.ops.preprocess(frame, self.contract.input_size, self.contract.mean, self.contract.std,
                            layout=self.contract.input_layout, out=out, stream=self._pre_stream,
                            region=self.region(frame.shape[:2]))
        self.device.synchronize(self._pre_stream)
        return out.reshape((1, *self._input_shape))

    def infer(self, batch):
        return self.engine.infer_device(batch)

    def _stack(self, batches, size: int):
        """A rig's device inputs gathered into one device batch of `size` (device-to-device copies,
        the last input repeated to fill it); the buffer is kept per size and reused."""
        stacked = self._stacks.get(size)
        if stacked is None:
            stacked = self._stacks[size] = self.device.empty((size, *self._input_shape), self._input_dtype)
        item = stacked.nbytes // size
        for index in range(size):
            source = batches[min(index, len(batches) - 1)]
            self.device.copy_on_device(stacked.pointer + index * item, array_view(source, "input batch")[0], item,
                                       self._gather_stream)
        self.device.synchronize(self._gather_stream)
        return stacked

    @staticmethod
    def _item(output, index: int):
        """The `index`-th image's device output as a batch of one (a view, no copy)."""
        return output[index].reshape((1, *output.shape[1:]))

    def postprocess(self, output, frame_hw: tuple[int, int]):
        """(uint8 labels on the device, whether the logits the frame uses had inf or NaN): frame
        size from low-resolution logits, input size otherwise (as CroppedLabels where a
        letterboxed frame covers only part of them). The check is one more kernel on the device
        and a one-byte download."""
        first = output[0]
        kind = self.contract.output_kind
        box = self._output_box(first, self.region(frame_hw))
        if kind == "labels":
            _, _, dtype = array_view(first, "labels")
            if dtype != np.uint8:
                raise EngineError(f"the GPU frame path takes uint8 labels; {self.engine.path.name} gives {dtype} "
                                  "(re-export with `python -m export.run`)")
            return (first if box is None else CroppedLabels(first, box)), False
        flag = self.ops.find_nonfinite(first, stream=self._post_stream, region=box)
        if kind == "lowres_logits":
            labels = self.ops.upsample_argmax(first, tuple(frame_hw), stream=self._post_stream, region=box)
        else:
            labels = self.ops.argmax(first, stream=self._post_stream)
        self.device.synchronize(self._post_stream)
        nonfinite = bool(self.device.download(flag)[0])
        return (labels if box is None or kind == "lowres_logits" else CroppedLabels(labels, box)), nonfinite

    def _output_box(self, output, region) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of an output that Processor._crop keeps for `region` (the
        CPU path's own rule, applied to index grids); None for all of it."""
        if region is None:
            return None
        _, shape, _ = array_view(output, "output")
        out_h, out_w = shape[-2:]
        key = (region, out_h, out_w)
        if key not in self._boxes:
            rows = self._crop(np.broadcast_to(np.arange(out_h)[:, None], (out_h, out_w)), region)
            cols = self._crop(np.broadcast_to(np.arange(out_w), (out_h, out_w)), region)
            self._boxes[key] = (int(rows[0, 0]), int(cols[0, 0]), *rows.shape)
        return self._boxes[key]

    def render(self, frame_bgr, labels, out: np.ndarray | None = None) -> np.ndarray:
        """The overlay, blended into the device frame and downloaded into `out` (pinned, reused)."""
        frame = self.upload(frame_bgr)
        labels, box = labels if isinstance(labels, CroppedLabels) else (labels, None)
        self.ops.blend(frame, labels, self.palette, self.alpha, out=frame, stream=self._post_stream,
                       labels_region=box)
        if out is None or out.shape != frame.shape:
            out = self.device.pinned_empty(frame.shape, np.uint8)
        self.device.download(frame, out, stream=self._post_stream)
        self.device.synchronize(self._post_stream)
        return out

    def frame_labels(self, labels, frame_hw: tuple[int, int]) -> np.ndarray:
        """The label map downloaded (its frame's rectangle) and sampled to frame size, as the overlay shows it."""
        if isinstance(labels, CroppedLabels):
            top, left, height, width = labels.box
            host = self.device.download(labels.labels)[top:top + height, left:left + width]
            return Processor.frame_labels(np.ascontiguousarray(host), frame_hw)
        return Processor.frame_labels(self.device.download(labels), frame_hw)

    def close(self) -> None:
        """Drop the streams and buffers and free the device's pools."""
        with self.device.current():
            self._upload_stream = self._pre_stream = self._post_stream = self._gather_stream = None
            self._staging.clear()
        self.device.close()
