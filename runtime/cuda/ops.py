"""The runtime's ops as CUDA kernels on device buffers, for the GPU pipeline.

Semantics are those of runtime/ops/reference.py: the sampling tables come from it and
kernels.cu repeats its float operations in the same order (compiled with --fmad=false), so
labels and bytes are identical to the reference and floats round the same way. Logits stay
on the device: upsample_argmax/argmax read a GPUArray and blend takes the device labels.

pycuda is imported only when a CudaOps is made, so the runtime imports without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.ops import reference
from runtime.ops.reference import OpsInputError

KERNEL_SOURCE = Path(__file__).with_name("kernels.cu")
PIXEL_BLOCK = (32, 8, 1)
LINEAR_BLOCK = (256, 1, 1)

# Kernel parameter formats for Function.prepare: P pointer, i int32, f float32.
_SIGNATURES = {
    "preprocess_nchw_f32": "PiiiPPPPPPffffffP",
    "preprocess_nchw_f16": "PiiiPPPPPPffffffP",
    "preprocess_nhwc_u8": "PiiiPPPPPPP",
    "upsample_argmax_f32": "PiiiiiPPPPPPP",
    "upsample_argmax_f16": "PiiiiiPPPPPPP",
    "argmax_f32": "PiiP",
    "argmax_f16": "PiiP",
    "blend": "PiiPiPPPiiP",
}


class CudaUnavailableError(RuntimeError):
    """pycuda or a current CUDA context is missing; the message says how to get one."""


def _import_pycuda():
    try:
        import pycuda.driver as driver
        import pycuda.gpuarray as gpuarray
        from pycuda.compiler import SourceModule
    except ImportError as exc:
        raise CudaUnavailableError(
            f"runtime.cuda needs pycuda ({exc}); install it on a CUDA machine with "
            "`pip install -e '.[gpu]'`, or use the CPU ops in runtime.ops") from exc
    return driver, gpuarray, SourceModule


def _blocks(extent: int, block: int) -> int:
    return (extent + block - 1) // block


class CudaOps:
    """The four ops, compiled once in the CUDA context current at construction.

    Array inputs are host numpy arrays (copied to the device on the call's stream; pass
    page-locked arrays for a truly asynchronous copy) or C-contiguous pycuda GPUArrays.
    Results are GPUArrays, written into `out` when given. Every method takes an optional
    pycuda Stream: work on one stream runs in order, and the upload buffers this object
    reuses are kept per stream, so one stream per in-flight frame is safe.
    """

    def __init__(self):
        driver, self._gpuarray, source_module = _import_pycuda()
        if driver.Context.get_current() is None:
            raise CudaUnavailableError("runtime.cuda: no current CUDA context; create one first "
                                       "(e.g. `import pycuda.autoinit`)")
        module = source_module(KERNEL_SOURCE.read_text(), options=["--fmad=false"], no_extern_c=True)
        self._kernels = {name: module.get_function(name).prepare(formats)
                         for name, formats in _SIGNATURES.items()}
        self._tables: dict = {}
        self._uploads: dict = {}
        self._palettes: dict = {}

    # -- ops ------------------------------------------------------------------------------

    def preprocess(self, frame_bgr, out_hw, mean, std, layout="nchw_float", dtype=np.float32, out=None,
                   stream=None):
        """reference.preprocess on the device: (3, h, w) float32/float16 or (h, w, 3) uint8."""
        op = "preprocess"
        frame = self._device_input(op, "frame_bgr", frame_bgr, (np.uint8,), 3, "(H, W, 3)", stream)
        if frame.shape[2] != 3:
            raise OpsInputError(f"{op}: frame_bgr must have 3 channels (BGR), got shape {frame.shape}")
        height, width = reference.parse_size(op, "out_hw", out_hw)
        mean = [float(v) for v in np.float32(reference.parse_triplet(op, "mean", mean))]
        std = [float(v) for v in np.float32(reference.parse_triplet(op, "std", std, positive=True))]
        layout = reference.parse_layout(op, layout)
        out_dtype = reference.parse_float_dtype(op, dtype)
        src_h, src_w = frame.shape[:2]
        y0, y1, fy, qy = self._taps("half_pixel", src_h, height)
        x0, x1, fx, qx = self._taps("half_pixel", src_w, width)
        grid = (_blocks(width, PIXEL_BLOCK[0]), _blocks(height, PIXEL_BLOCK[1]))
        if layout == "nhwc_uint8":
            result = self._output(op, out, (height, width, 3), np.uint8)
            self._kernels["preprocess_nhwc_u8"].prepared_async_call(
                grid, PIXEL_BLOCK, stream, frame.ptr, src_w, height, width,
                y0.ptr, y1.ptr, qy.ptr, x0.ptr, x1.ptr, qx.ptr, result.ptr)
            return result
        result = self._output(op, out, (3, height, width), out_dtype)
        kernel = "preprocess_nchw_f16" if out_dtype == np.float16 else "preprocess_nchw_f32"
        self._kernels[kernel].prepared_async_call(
            grid, PIXEL_BLOCK, stream, frame.ptr, src_w, height, width,
            y0.ptr, y1.ptr, fy.ptr, x0.ptr, x1.ptr, fx.ptr, *mean, *std, result.ptr)
        return result

    def upsample_argmax(self, lowres, out_hw, out=None, stream=None):
        """reference.upsample_argmax on device logits: (H, W) uint8 labels."""
        op = "upsample_argmax"
        logits = self._device_logits(op, lowres, stream)
        height, width = reference.parse_size(op, "out_hw", out_hw)
        classes, h, w = logits.shape
        y0, y1, fy, _ = self._taps("align_corners", h, height)
        x0, x1, fx, _ = self._taps("align_corners", w, width)
        labels = self._output(op, out, (height, width), np.uint8)
        kernel = "upsample_argmax_f16" if logits.dtype == np.float16 else "upsample_argmax_f32"
        self._kernels[kernel].prepared_async_call(
            (_blocks(width, PIXEL_BLOCK[0]), _blocks(height, PIXEL_BLOCK[1])), PIXEL_BLOCK, stream,
            logits.ptr, classes, h, w, height, width, y0.ptr, y1.ptr, fy.ptr, x0.ptr, x1.ptr, fx.ptr, labels.ptr)
        return labels

    def argmax(self, logits, out=None, stream=None):
        """reference.argmax on device logits: (H, W) uint8 labels."""
        op = "argmax"
        logits = self._device_logits(op, logits, stream)
        classes, height, width = logits.shape
        labels = self._output(op, out, (height, width), np.uint8)
        kernel = "argmax_f16" if logits.dtype == np.float16 else "argmax_f32"
        self._kernels[kernel].prepared_async_call(
            (_blocks(height * width, LINEAR_BLOCK[0]), 1), LINEAR_BLOCK, stream,
            logits.ptr, classes, height * width, labels.ptr)
        return labels

    def blend(self, frame_bgr, labels, palette_rgb, alpha, out=None, stream=None):
        """reference.blend on the device: (H, W, 3) uint8 BGR; `out` may be the device frame."""
        op = "blend"
        frame = self._device_input(op, "frame_bgr", frame_bgr, (np.uint8,), 3, "(H, W, 3)", stream)
        if frame.shape[2] != 3:
            raise OpsInputError(f"{op}: frame_bgr must have 3 channels (BGR), got shape {frame.shape}")
        labels = self._device_input(op, "labels", labels, (np.uint8,), 2, "(h, w)", stream)
        palette = self._device_palette(op, palette_rgb)
        weight = reference.quantise_alpha(op, alpha)
        height, width = frame.shape[:2]
        label_h, label_w = labels.shape
        rows = self._nearest(label_h, height)
        cols = self._nearest(label_w, width)
        result = self._output(op, out, (height, width, 3), np.uint8)
        self._kernels["blend"].prepared_async_call(
            (_blocks(width, PIXEL_BLOCK[0]), _blocks(height, PIXEL_BLOCK[1])), PIXEL_BLOCK, stream,
            frame.ptr, height, width, labels.ptr, label_w, rows.ptr, cols.ptr, palette.ptr, palette.shape[0],
            weight, result.ptr)
        return result

    # -- buffers --------------------------------------------------------------------------

    def _device_input(self, op, name, array, dtypes, ndim, shape_doc, stream):
        """A device array for `array`: a checked GPUArray as is, a host array uploaded into a
        buffer kept for this stream, name and shape."""
        if isinstance(array, np.ndarray):
            array = reference.check_array(op, name, array, dtypes, ndim, shape_doc)
            # The entry holds the stream itself, so its id cannot be reused while cached.
            key = (name, array.shape, array.dtype.str, id(stream))
            if key not in self._uploads:
                self._uploads[key] = (stream, self._gpuarray.empty(array.shape, array.dtype))
            buffer = self._uploads[key][1]
            buffer.set_async(array, stream=stream)
            return buffer
        if not isinstance(array, self._gpuarray.GPUArray):
            raise OpsInputError(f"{op}: {name} must be a numpy array or a pycuda GPUArray of shape "
                                f"{shape_doc}, got {type(array).__name__}")
        names = " or ".join(np.dtype(d).name for d in dtypes)
        if array.dtype not in tuple(np.dtype(d) for d in dtypes) or len(array.shape) != ndim:
            raise OpsInputError(f"{op}: {name} must be a {names} array of shape {shape_doc}, "
                                f"got {array.dtype} of shape {array.shape}")
        if not array.flags.c_contiguous or min(array.shape) < 1:
            raise OpsInputError(f"{op}: {name} must be a non-empty C-contiguous GPUArray, got shape "
                                f"{array.shape}")
        return array

    def _device_logits(self, op, logits, stream):
        logits = self._device_input(op, "logits", logits, (np.float32, np.float16), 3, "(K, H, W)", stream)
        if logits.shape[0] > reference.MAX_CLASSES:
            raise OpsInputError(f"{op}: logits have {logits.shape[0]} classes; uint8 labels allow "
                                f"at most {reference.MAX_CLASSES}")
        return logits

    def _device_palette(self, op, palette_rgb):
        palette = reference.check_array(op, "palette_rgb", palette_rgb, (np.uint8,), 2, "(K, 3)")
        if palette.shape[1] != 3 or palette.shape[0] > reference.MAX_CLASSES:
            raise OpsInputError(f"{op}: palette_rgb must have shape (K, 3) with K <= "
                                f"{reference.MAX_CLASSES}, got {palette.shape}")
        key = palette.tobytes()
        if key not in self._palettes:
            self._palettes[key] = self._gpuarray.to_gpu(palette)
        return self._palettes[key]

    def _output(self, op, out, shape, dtype):
        if out is None:
            return self._gpuarray.empty(shape, dtype)
        if (not isinstance(out, self._gpuarray.GPUArray) or out.dtype != np.dtype(dtype)
                or tuple(out.shape) != shape or not out.flags.c_contiguous):
            got = f"{out.dtype} {out.shape}" if isinstance(out, self._gpuarray.GPUArray) else type(out).__name__
            raise OpsInputError(f"{op}: out must be a C-contiguous {np.dtype(dtype)} GPUArray of shape "
                                f"{shape}, got {got}")
        return out

    def _taps(self, kind, in_size, out_size):
        """The reference's taps for one axis, uploaded once per size pair."""
        key = (kind, in_size, out_size)
        if key not in self._tables:
            make = reference.half_pixel_taps if kind == "half_pixel" else reference.align_corners_taps
            self._tables[key] = tuple(self._gpuarray.to_gpu(np.ascontiguousarray(t)) for t in make(in_size, out_size))
        return self._tables[key]

    def _nearest(self, in_size, out_size):
        key = ("nearest", in_size, out_size)
        if key not in self._tables:
            self._tables[key] = self._gpuarray.to_gpu(reference.nearest_indices(in_size, out_size))
        return self._tables[key]
