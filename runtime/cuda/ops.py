"""The runtime's ops as CUDA kernels on device buffers, for the GPU frame path.

Semantics are those of runtime/ops/reference.py: the sampling tables come from it and
kernels.cu repeats its float operations in the same order (compiled with --fmad=false), so
labels and bytes are identical to the reference and floats round the same way. Logits stay on
the device: upsample_argmax/argmax read device logits and blend takes the device labels.

The kernels run through pycuda or CuPy (runtime.cuda.device); neither is imported until a
CudaOps is made, so the runtime imports without them.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from pathlib import Path

import numpy as np

from runtime.cuda.device import CudaDevice, CudaUnavailableError, DeviceArray, array_view, open_device
from runtime.ops import reference
from runtime.ops.reference import OpsInputError

__all__ = ["CudaOps", "CudaUnavailableError"]

KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
# No fused multiply-adds, so floats round like the reference's separate NumPy operations.
COMPILE_OPTIONS = ("--fmad=false",)
PIXEL_BLOCK = (32, 8, 1)
LINEAR_BLOCK = (256, 1, 1)

# Kernel parameters: P pointer, i int32, f float32.
SIGNATURES = {
    "preprocess_nchw_f32": "PiiiiiiiPPPPPPffffffP",
    "preprocess_nchw_f16": "PiiiiiiiPPPPPPffffffP",
    "preprocess_nhwc_u8": "PiiiiiiiPPPPPPiiiP",
    "upsample_argmax_f32": "PiiiiiPPPPPPP",
    "upsample_argmax_f16": "PiiiiiPPPPPPP",
    "argmax_f32": "PiiP",
    "argmax_f16": "PiiP",
    "find_nonfinite_f32": "PiiiiiiiP",
    "find_nonfinite_f16": "PiiiiiiiP",
    "blend": "PiiPiPPPiiP",
}


def _blocks(extent: int, block: int) -> int:
    return (extent + block - 1) // block


def _pixel_grid(height: int, width: int) -> tuple[int, int, int]:
    return _blocks(width, PIXEL_BLOCK[0]), _blocks(height, PIXEL_BLOCK[1]), 1


@dataclasses.dataclass
class _Operand:
    """A checked device input: its pointer, shape and dtype."""

    pointer: int
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclasses.dataclass
class _StagingSlot:
    host: np.ndarray  # page-locked
    device: DeviceArray
    done: object = None  # event recorded after the last kernel that read `device`


class _Staging:
    """Pinned host + device buffer pairs for host inputs: at most `slots` per shape and dtype and
    `shapes` shapes, so nothing grows per call or per stream. A pair is reused round robin once
    the event recorded after its last reader has passed; the copy from pinned memory is
    asynchronous, where one from pageable memory would block the host."""

    def __init__(self, device: CudaDevice, slots: int = 4, shapes: int = 8):
        self._device, self._slots, self._shapes = device, slots, shapes
        self._rings: collections.OrderedDict[tuple, list[_StagingSlot]] = collections.OrderedDict()

    def upload(self, array: np.ndarray, stream) -> _StagingSlot:
        key = (array.shape, array.dtype.str)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = []
            while len(self._rings) > self._shapes:
                for slot in self._rings.popitem(last=False)[1]:
                    self._wait(slot)
        self._rings.move_to_end(key)
        if len(ring) < self._slots:
            slot = _StagingSlot(self._device.pinned_empty(array.shape, array.dtype),
                                self._device.empty(array.shape, array.dtype))
        else:
            slot = ring.pop(0)
            self._wait(slot)
        ring.append(slot)
        np.copyto(slot.host, array)
        self._device.copy_to_device(slot.device.pointer, slot.host, stream)
        return slot

    def read_by(self, slots: list[_StagingSlot], stream) -> None:
        """Mark `slots` busy until the work queued on `stream` so far has run."""
        if slots:
            event = self._device.record_event(stream)
            for slot in slots:
                slot.done = event

    @staticmethod
    def _wait(slot: _StagingSlot) -> None:
        if slot.done is not None:
            slot.done.synchronize()
            slot.done = None


class CudaOps:
    """The four ops, and the inf/NaN check of logits, on one CUDA device, compiled once.

    Array inputs are host numpy arrays (copied through the bounded pinned staging buffers) or
    C-contiguous device arrays of any library (CUDA array interface). Results are DeviceArrays
    from the device's memory pool, or written into `out` when given. Every method takes an
    optional stream (the library's own) and only queues work on it: wait for the stream before
    reading a result on the host. Calls are safe from any thread: each makes the device's
    context current for itself.
    """

    def __init__(self, device: CudaDevice | None = None):
        self.device = device if device is not None else open_device()
        self._kernels = self.device.compile(KERNEL_SOURCE.read_text(), SIGNATURES, COMPILE_OPTIONS)
        self._tables: dict = {}
        self._palettes: dict = {}
        self._staging = _Staging(self.device)
        self._zero = self.device.to_device(np.zeros(1, np.uint8))  # what find_nonfinite's flag starts from
        self._lock = threading.Lock()  # staging and tables are shared by the pipeline's stage threads

    @contextlib.contextmanager
    def _call(self, stream):
        """The body of one op: the context current, the shared state locked, and the staging
        slots it uploaded into marked busy until its kernels have run."""
        staged: list[_StagingSlot] = []
        with self._lock, self.device.current():
            yield staged
            self._staging.read_by(staged, stream)

    # -- ops ------------------------------------------------------------------------------

    def preprocess(self, frame_bgr, out_hw, mean, std, layout="nchw_float", dtype=np.float32, out=None,
                   stream=None, region=None):
        """reference.preprocess on the device: (3, h, w) float32/float16 or (h, w, 3) uint8,
        letterboxed into `region` (top, left, height, width) when given."""
        op = "preprocess"
        height, width = reference.parse_size(op, "out_hw", out_hw, channels=3)
        mean = [float(v) for v in np.float32(reference.parse_triplet(op, "mean", mean))]
        std = [float(v) for v in np.float32(reference.parse_triplet(op, "std", std, positive=True))]
        layout = reference.parse_layout(op, layout)
        out_dtype = reference.parse_float_dtype(op, dtype)
        region = reference.parse_region(op, region, (height, width))
        with self._call(stream) as staged:
            frame = self._frame(op, frame_bgr, stream, staged)
            src_h, src_w = frame.shape[:2]
            y0, y1, fy, qy = self._taps("half_pixel", src_h, region[2])
            x0, x1, fx, qx = self._taps("half_pixel", src_w, region[3])
            if layout == "nhwc_uint8":
                result, pointer = self._output(op, out, (height, width, 3), np.uint8)
                self._kernels["preprocess_nhwc_u8"](
                    _pixel_grid(height, width), PIXEL_BLOCK, stream, frame.pointer, src_w, height, width, *region,
                    y0.pointer, y1.pointer, qy.pointer, x0.pointer, x1.pointer, qx.pointer,
                    *(int(v) for v in reference.pad_bytes(mean)), pointer)
                return result
            result, pointer = self._output(op, out, (3, height, width), out_dtype)
            kernel = "preprocess_nchw_f16" if out_dtype == np.float16 else "preprocess_nchw_f32"
            self._kernels[kernel](
                _pixel_grid(height, width), PIXEL_BLOCK, stream, frame.pointer, src_w, height, width, *region,
                y0.pointer, y1.pointer, fy.pointer, x0.pointer, x1.pointer, fx.pointer, *mean, *std, pointer)
            return result

    def upsample_argmax(self, lowres, out_hw, out=None, stream=None, region=None):
        """reference.upsample_argmax on device logits: (H, W) uint8 labels. With `region`
        (top, left, height, width), of the logits in that rectangle only, read where they lie:
        the tables index into the whole array (a letterboxed input's padding cut off, no copy)."""
        op = "upsample_argmax"
        height, width = reference.parse_size(op, "out_hw", out_hw)
        with self._call(stream) as staged:
            logits = self._logits(op, lowres, stream, staged)
            classes, h, w = logits.shape
            top, left, region_h, region_w = reference.parse_region(op, region, (h, w))
            y0, y1, fy, _ = self._taps("align_corners", region_h, height, top)
            x0, x1, fx, _ = self._taps("align_corners", region_w, width, left)
            labels, pointer = self._output(op, out, (height, width), np.uint8)
            kernel = "upsample_argmax_f16" if logits.dtype == np.float16 else "upsample_argmax_f32"
            self._kernels[kernel](
                _pixel_grid(height, width), PIXEL_BLOCK, stream, logits.pointer, classes, h, w, height, width,
                y0.pointer, y1.pointer, fy.pointer, x0.pointer, x1.pointer, fx.pointer, pointer)
            return labels

    def argmax(self, logits, out=None, stream=None):
        """reference.argmax on device logits: (H, W) uint8 labels."""
        op = "argmax"
        with self._call(stream) as staged:
            logits = self._logits(op, logits, stream, staged)
            classes, height, width = logits.shape
            labels, pointer = self._output(op, out, (height, width), np.uint8)
            kernel = "argmax_f16" if logits.dtype == np.float16 else "argmax_f32"
            self._kernels[kernel]((_blocks(height * width, LINEAR_BLOCK[0]), 1, 1), LINEAR_BLOCK, stream,
                                  logits.pointer, classes, height * width, pointer)
            return labels

    def find_nonfinite(self, logits, stream=None, region=None):
        """A one-byte device flag: 1 where the logits (of `region` (top, left, height, width)
        only, when given, read in place) hold an inf or NaN, else 0; reference.has_nonfinite."""
        op = "find_nonfinite"
        with self._call(stream) as staged:
            logits = self._logits(op, logits, stream, staged)
            classes, h, w = logits.shape
            top, left, region_h, region_w = reference.parse_region(op, region, (h, w))
            flag = self.device.empty((1,), np.uint8)
            self.device.copy_on_device(flag.pointer, self._zero.pointer, 1, stream)
            kernel = "find_nonfinite_f16" if logits.dtype == np.float16 else "find_nonfinite_f32"
            self._kernels[kernel](_pixel_grid(region_h, region_w), PIXEL_BLOCK, stream, logits.pointer, classes, h, w,
                                  top, left, region_h, region_w, flag.pointer)
            return flag

    def blend(self, frame_bgr, labels, palette_rgb, alpha, out=None, stream=None, labels_region=None):
        """reference.blend on the device: (H, W, 3) uint8 BGR; `out` may be the device frame.
        With `labels_region` (top, left, height, width), the labels in that rectangle cover the
        frame, read where they lie (a letterboxed input's labels without their padding)."""
        op = "blend"
        weight = reference.quantise_alpha(op, alpha)
        with self._call(stream) as staged:
            frame = self._frame(op, frame_bgr, stream, staged)
            labels = self._input(op, "labels", labels, (np.uint8,), 2, "(h, w)", stream, staged)
            palette = self._palette(op, palette_rgb)
            height, width = frame.shape[:2]
            label_w = labels.shape[1]
            top, left, region_h, region_w = reference.parse_region(op, labels_region, labels.shape)
            rows = self._nearest(region_h, height, top)
            cols = self._nearest(region_w, width, left)
            result, pointer = self._output(op, out, (height, width, 3), np.uint8)
            self._kernels["blend"](
                _pixel_grid(height, width), PIXEL_BLOCK, stream, frame.pointer, height, width, labels.pointer,
                label_w, rows.pointer, cols.pointer, palette.pointer, palette.shape[0], weight, pointer)
            return result

    # -- operands -------------------------------------------------------------------------

    def _input(self, op, name, array, dtypes, ndim, shape_doc, stream, staged) -> _Operand:
        """A checked device operand: a host array goes through a staging slot, a device array is
        used where it lies."""
        if isinstance(array, np.ndarray):
            array = reference.check_array(op, name, array, dtypes, ndim, shape_doc)
            slot = self._staging.upload(array, stream)
            staged.append(slot)
            return _Operand(slot.device.pointer, array.shape, array.dtype)
        try:
            pointer, shape, dtype = array_view(array, name)
        except TypeError as exc:
            raise OpsInputError(f"{op}: {exc}; pass a numpy array or a C-contiguous device array of shape "
                                f"{shape_doc}") from None
        names = " or ".join(np.dtype(d).name for d in dtypes)
        if dtype not in tuple(np.dtype(d) for d in dtypes) or len(shape) != ndim:
            raise OpsInputError(f"{op}: {name} must be a {names} array of shape {shape_doc}, "
                                f"got {dtype} of shape {shape}")
        if min(shape) < 1:
            raise OpsInputError(f"{op}: {name} must not be empty, got shape {shape}")
        return _Operand(pointer, shape, dtype)

    def _frame(self, op, frame_bgr, stream, staged) -> _Operand:
        frame = self._input(op, "frame_bgr", frame_bgr, (np.uint8,), 3, "(H, W, 3)", stream, staged)
        if frame.shape[2] != 3:
            raise OpsInputError(f"{op}: frame_bgr must have 3 channels (BGR), got shape {frame.shape}")
        return frame

    def _logits(self, op, logits, stream, staged) -> _Operand:
        logits = self._input(op, "logits", logits, (np.float32, np.float16), 3, "(K, H, W)", stream, staged)
        if logits.shape[0] > reference.MAX_CLASSES:
            raise OpsInputError(f"{op}: logits have {logits.shape[0]} classes; uint8 labels allow "
                                f"at most {reference.MAX_CLASSES}")
        return logits

    def _palette(self, op, palette_rgb) -> DeviceArray:
        palette = reference.check_array(op, "palette_rgb", palette_rgb, (np.uint8,), 2, "(K, 3)")
        if palette.shape[1] != 3 or palette.shape[0] > reference.MAX_CLASSES:
            raise OpsInputError(f"{op}: palette_rgb must have shape (K, 3) with K <= "
                                f"{reference.MAX_CLASSES}, got {palette.shape}")
        key = palette.tobytes()
        if key not in self._palettes:
            self._palettes[key] = self.device.to_device(palette)
        return self._palettes[key]

    def _output(self, op, out, shape, dtype):
        """(result, pointer): `out` when given and fitting, else a new pooled DeviceArray."""
        if out is None:
            result = self.device.empty(shape, dtype)
            return result, result.pointer
        try:
            pointer, got_shape, got_dtype = array_view(out, "out")
        except TypeError as exc:
            raise OpsInputError(f"{op}: {exc}; out must be a C-contiguous {np.dtype(dtype)} device array of "
                                f"shape {shape}") from None
        if got_dtype != np.dtype(dtype) or got_shape != shape:
            raise OpsInputError(f"{op}: out must be a C-contiguous {np.dtype(dtype)} device array of shape "
                                f"{shape}, got {got_dtype} {got_shape}")
        return out, pointer

    def _taps(self, kind, in_size, out_size, offset=0):
        """The reference's taps for one axis, their indices moved by `offset` (where the sampled
        rectangle starts), uploaded once per size pair and offset."""
        key = (kind, in_size, out_size, offset)
        if key not in self._tables:
            make = reference.half_pixel_taps if kind == "half_pixel" else reference.align_corners_taps
            i0, i1, frac, frac_q = make(in_size, out_size)
            self._tables[key] = tuple(self.device.to_device(np.ascontiguousarray(t))
                                      for t in (i0 + np.int32(offset), i1 + np.int32(offset), frac, frac_q))
        return self._tables[key]

    def _nearest(self, in_size, out_size, offset=0):
        key = ("nearest", in_size, out_size, offset)
        if key not in self._tables:
            indices = reference.nearest_indices(in_size, out_size) + np.int32(offset)
            self._tables[key] = self.device.to_device(indices)
        return self._tables[key]
