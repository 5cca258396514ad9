"""NumPy reference of the runtime's fused pre/post-processing ops: it defines their semantics.

The C extension (`runtime.ops._ops`) and the CUDA kernels (`runtime.cuda`) reproduce these
functions; the tests compare them against this module. Every rounding rule is stated here so
that the fast versions can match it bit for bit where the result is an integer.

Sampling positions are computed exactly in integers (a rational source coordinate num / den),
so every implementation derives the same taps and weights from the same sizes.

Non-finite logits (an fp16 engine that overflows gives inf, a broken one NaN) have one meaning
everywhere: NaN counts as -inf, and every tie (+inf against +inf included) goes to the lowest
class index. Interpolation first saturates each logit to [-LOGIT_LIMIT, LOGIT_LIMIT] (NaN to
-LOGIT_LIMIT), so every interpolated value is finite and no inf - inf can make a NaN.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

LAYOUTS = ("nchw_float", "nhwc_uint8")
# Weights of the uint8 resize are quantised to 1/2048 (11 bits, as OpenCV's INTER_LINEAR).
RESIZE_WEIGHT_ONE = 2048
# The blend's alpha is quantised to 1/256.
ALPHA_ONE = 256
# Labels are uint8, so at most 256 classes.
MAX_CLASSES = 256
# Every array an op reads or writes has fewer than 2^31 elements, so no index or size product
# overflows 32 bits (the CUDA kernels count pixels in int); larger sizes are refused up front.
MAX_ELEMENTS = 2 ** 31 - 1
# What upsample_argmax saturates logits to before interpolating (2^126): the difference of two
# saturated logits, 2^127, and every lerp of them stay finite in float32.
LOGIT_LIMIT = np.float32(2.0 ** 126)


class OpsInputError(ValueError):
    """An op got an argument it cannot process; the message names the argument and the fix."""


# ---------------------------------------------------------------------------------------------
# Argument checks shared by every backend (the C wrappers call these too).


def parse_size(op: str, name: str, size, channels: int = 1) -> tuple[int, int]:
    """(height, width) as two positive ints whose array of `channels` values per pixel has at
    most MAX_ELEMENTS elements."""
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size)):
        raise OpsInputError(f"{op}: {name} must be (height, width) as two ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise OpsInputError(f"{op}: {name} must be positive, got {size!r}")
    if height * width * channels > MAX_ELEMENTS:
        raise OpsInputError(f"{op}: {name} {size!r} makes an output of {height * width * channels} elements; "
                            f"at most {MAX_ELEMENTS} (2^31 - 1) are allowed")
    return height, width


def parse_triplet(op: str, name: str, values, positive: bool = False) -> tuple[float, float, float]:
    """Three finite per-channel (R, G, B) floats."""
    try:
        triplet = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise OpsInputError(f"{op}: {name} must be three numbers (R, G, B), got {values!r}") from None
    if len(triplet) != 3 or not all(math.isfinite(v) for v in triplet):
        raise OpsInputError(f"{op}: {name} must be three finite numbers (R, G, B), got {values!r}")
    if positive and min(triplet) <= 0:
        raise OpsInputError(f"{op}: {name} must be positive, got {values!r}")
    return triplet


def parse_layout(op: str, layout) -> str:
    if layout not in LAYOUTS:
        raise OpsInputError(f"{op}: layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def parse_region(op: str, region, out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of `out_hw` the frame fills; all of it for None."""
    if region is None:
        return (0, 0, *out_hw)
    if (not isinstance(region, (tuple, list)) or len(region) != 4
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in region)):
        raise OpsInputError(f"{op}: region must be (top, left, height, width) as four ints, got {region!r}")
    top, left, height, width = (int(v) for v in region)
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > out_hw[0] or left + width > out_hw[1]:
        raise OpsInputError(f"{op}: region {region!r} must lie inside out_hw {out_hw}")
    return top, left, height, width


def pad_bytes(mean) -> np.ndarray:
    """The mean colour as RGB bytes, floor(mean * 255 + 0.5) clipped to 0..255: the "nhwc_uint8"
    letterbox padding (float layouts pad with 0.0, the mean colour normalised)."""
    levels = np.floor(np.asarray(mean, dtype=np.float64) * 255 + 0.5)
    return np.clip(levels, 0, 255).astype(np.uint8)


def parse_float_dtype(op: str, dtype) -> np.dtype:
    """float32 or float16: the element type of a normalised network input."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise OpsInputError(f"{op}: dtype must be np.float32 or np.float16, got {dtype!r}")
    return resolved


def parse_alpha(op: str, alpha) -> float:
    if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool)
            or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0):
        raise OpsInputError(f"{op}: alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def quantise_alpha(op: str, alpha) -> int:
    """alpha in [0, 1] as an integer weight a in 0..256: a = floor(alpha * 256 + 0.5)."""
    return int(math.floor(parse_alpha(op, alpha) * ALPHA_ONE + 0.5))


def check_array(op: str, name: str, array, dtypes: tuple, ndim: int, shape_doc: str) -> np.ndarray:
    """The array itself if it has one of `dtypes`, `ndim` dimensions and is C-contiguous.

    The C ops read raw memory, so every backend demands the same layout; copying silently
    would hide a per-frame cost from the caller.
    """
    names = " or ".join(np.dtype(d).name for d in dtypes)
    if not isinstance(array, np.ndarray):
        raise OpsInputError(f"{op}: {name} must be a numpy {names} array of shape {shape_doc}, "
                            f"got {type(array).__name__}; convert it with np.asarray")
    if array.dtype not in tuple(np.dtype(d) for d in dtypes) or array.ndim != ndim:
        raise OpsInputError(f"{op}: {name} must be a {names} array of shape {shape_doc}, "
                            f"got {array.dtype} of shape {array.shape}")
    if not (array.flags.c_contiguous and array.flags.aligned and array.dtype.isnative):
        raise OpsInputError(f"{op}: {name} must be C-contiguous, aligned and native-endian; "
                            f"pass np.ascontiguousarray({name})")
    if min(array.shape) < 1:
        raise OpsInputError(f"{op}: {name} must not be empty, got shape {array.shape}")
    if array.size > MAX_ELEMENTS:
        raise OpsInputError(f"{op}: {name} has {array.size} elements; at most {MAX_ELEMENTS} (2^31 - 1) are allowed")
    return array


def check_frame(op: str, frame) -> np.ndarray:
    frame = check_array(op, "frame_bgr", frame, (np.uint8,), 3, "(H, W, 3)")
    if frame.shape[2] != 3:
        raise OpsInputError(f"{op}: frame_bgr must have 3 channels (BGR), got shape {frame.shape}")
    return frame


def check_logits(op: str, logits) -> np.ndarray:
    logits = check_array(op, "logits", logits, (np.float32, np.float16), 3, "(K, H, W)")
    if logits.shape[0] > MAX_CLASSES:
        raise OpsInputError(f"{op}: logits have {logits.shape[0]} classes; uint8 labels allow "
                            f"at most {MAX_CLASSES}")
    return logits


def deliver(op: str, result: np.ndarray, out) -> np.ndarray:
    """`result`, written into the caller's buffer when one is given."""
    if out is None:
        return result
    if (not isinstance(out, np.ndarray) or out.dtype != result.dtype or out.shape != result.shape
            or not out.flags.c_contiguous or not out.flags.writeable or not out.flags.aligned
            or not out.dtype.isnative):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise OpsInputError(f"{op}: out must be a writeable, aligned, C-contiguous {result.dtype} array of "
                            f"shape {result.shape}, got {got}")
    np.copyto(out, result)
    return out


# ---------------------------------------------------------------------------------------------
# Sampling taps.


def _taps(num: np.ndarray, den: int, in_size: int):
    """Taps for source coordinates num / den; outside [0, in_size - 1] they clamp to the edge."""
    i0 = np.floor_divide(num, den)
    rem = num - i0 * den
    below, above = num < 0, i0 >= in_size - 1
    clamped = below | above
    i0 = np.where(below, 0, np.where(above, in_size - 1, i0))
    rem = np.where(clamped, 0, rem)
    i1 = np.where(clamped, i0, i0 + 1)
    frac = (rem / den).astype(np.float32)
    frac_q = (2 * rem * RESIZE_WEIGHT_ONE + den) // (2 * den)  # round half up
    return i0.astype(np.int32), i1.astype(np.int32), frac, frac_q.astype(np.int32)


def half_pixel_taps(in_size: int, out_size: int):
    """Taps of a half-pixel-centre resize (OpenCV INTER_LINEAR, align_corners=False).

    Output index d samples src = (d + 0.5) * in_size / out_size - 0.5 = num / den with
    num = (2d + 1) * in_size - out_size and den = 2 * out_size. Positions before the first pixel
    centre or after the last take that pixel alone (weight 0), as OpenCV does. No antialiasing.
    Returns (i0, i1, frac, frac_q): int32 tap indices, the float32 weight of i1 and that weight
    in 1/2048 units rounded half up.
    """
    d = np.arange(out_size, dtype=np.int64)
    return _taps((2 * d + 1) * in_size - out_size, 2 * out_size, in_size)


def align_corners_taps(in_size: int, out_size: int):
    """Taps of an align_corners=True resize: src = d * (in_size - 1) / (out_size - 1).

    This is PyTorch's F.interpolate(..., mode="bilinear", align_corners=True) mapping, which
    the network's own final upsample uses. A single output pixel samples src = 0.
    """
    d = np.arange(out_size, dtype=np.int64)
    return _taps(d * (in_size - 1), max(out_size - 1, 1), in_size)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Nearest-neighbour source index floor(d * in_size / out_size), exactly.

    This is cv2.INTER_NEAREST's formula; OpenCV evaluates it in floating point and lands one
    pixel lower where d * in_size / out_size is a whole number (e.g. in 2, out 98, d 49).
    """
    return (np.arange(out_size, dtype=np.int64) * in_size // out_size).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# The ops.


def preprocess(frame_bgr, out_hw, mean, std, layout="nchw_float", dtype=np.float32, out=None, region=None):
    """Resize a BGR frame to the network input and lay it out as the network takes it.

    The resize is bilinear on half-pixel centres (`half_pixel_taps`), vertical pass first.
    layout "nchw_float": per BGR channel
        row = (1 - fy) * frame[y0] + fy * frame[y1]       (float32)
        v   = (1 - fx) * row[x0]   + fx * row[x1]         (float32)
    then RGB planes (v / 255 - mean) / std, shape (3, h, w), float32, or float16 rounded to
    nearest-even from that float32 when dtype is float16. mean/std are RGB on the 0..1 scale.
    layout "nhwc_uint8": exact integer arithmetic with weights qy, qx in 1/2048 units,
        sum = sum over the 4 taps of pixel * wy * wx   (wy in {2048 - qy, qy}, same for x)
        out = (sum + 2**21) >> 22                       (round half up)
    as RGB bytes of shape (h, w, 3); the network normalises in-graph, so std and dtype are not
    used. `region` = (top, left, height, width) letterboxes: the frame is resized into that
    rectangle only, and the rest is the mean colour (0.0 in float layouts, `pad_bytes(mean)`
    in "nhwc_uint8"). `out` receives the result when given.
    """
    op = "preprocess"
    frame = check_frame(op, frame_bgr)
    out_hw = parse_size(op, "out_hw", out_hw, channels=3)
    mean = np.array(parse_triplet(op, "mean", mean), dtype=np.float32)
    std = np.array(parse_triplet(op, "std", std, positive=True), dtype=np.float32)
    layout = parse_layout(op, layout)
    out_dtype = parse_float_dtype(op, dtype)
    top, left, height, width = parse_region(op, region, out_hw)
    y0, y1, fy, qy = half_pixel_taps(frame.shape[0], height)
    x0, x1, fx, qx = half_pixel_taps(frame.shape[1], width)
    inside = np.s_[top:top + height, left:left + width]

    if layout == "nhwc_uint8":
        src = frame.astype(np.int64)
        wy1 = qy[:, None, None].astype(np.int64)
        rows = (RESIZE_WEIGHT_ONE - wy1) * src[y0] + wy1 * src[y1]
        wx1 = qx[None, :, None].astype(np.int64)
        total = (RESIZE_WEIGHT_ONE - wx1) * rows[:, x0] + wx1 * rows[:, x1]
        result = np.empty((*out_hw, 3), np.uint8)
        result[...] = pad_bytes(mean.astype(np.float64))
        result[inside] = ((total + (1 << 21)) >> 22).astype(np.uint8)[:, :, ::-1]
        return deliver(op, result, out)

    src = frame.astype(np.float32)
    wy = fy[:, None, None]
    rows = (1 - wy) * src[y0] + wy * src[y1]
    wx = fx[None, :, None]
    bgr = (1 - wx) * rows[:, x0] + wx * rows[:, x1]
    rgb = bgr[:, :, ::-1].transpose(2, 0, 1)
    normalised = (rgb / np.float32(255) - mean[:, None, None]) / std[:, None, None]
    result = np.zeros((3, *out_hw), out_dtype)
    result[(slice(None), *inside)] = normalised
    return deliver(op, result, out)


def saturate_logits(logits: np.ndarray) -> np.ndarray:
    """float32 logits clipped to [-LOGIT_LIMIT, LOGIT_LIMIT], NaN mapped to -LOGIT_LIMIT: what
    upsample_argmax interpolates (+inf becomes 2^126, -inf and NaN -2^126)."""
    values = logits.astype(np.float32)
    return np.clip(np.where(np.isnan(values), -LOGIT_LIMIT, values), -LOGIT_LIMIT, LOGIT_LIMIT)


def has_nonfinite(logits: np.ndarray) -> bool:
    """Whether any logit is inf or NaN (a network output the caller should hear about)."""
    return not np.isfinite(logits).all()


def upsample_logits(lowres, out_hw) -> np.ndarray:
    """Bilinear align_corners=True upsample of (K, h, w) logits to float32 (K, H, W).

    With taps from `align_corners_taps` and L = saturate_logits(lowres), horizontal pass first:
        row = L[:, y, x0] + fx * (L[:, y, x1] - L[:, y, x0])     for every source row y
        v   = row[y0] + fy * (row[y1] - row[y0])
    """
    op = "upsample_argmax"
    logits = check_logits(op, lowres)
    height, width = parse_size(op, "out_hw", out_hw)
    _, h, w = logits.shape
    y0, y1, fy, _ = align_corners_taps(h, height)
    x0, x1, fx, _ = align_corners_taps(w, width)
    src = saturate_logits(logits)
    left, right = src[:, :, x0], src[:, :, x1]
    rows = left + fx * (right - left)
    top, bottom = rows[:, y0], rows[:, y1]
    return top + fy[:, None] * (bottom - top)


def upsample_argmax(lowres, out_hw, report_nonfinite=False):
    """Labels of `upsample_logits` (the class with the largest value, the lowest index on a
    tie, as np.argmax), which the fast versions compute without keeping the logits.

    They give these labels exactly, ties included, by evaluating the same float operations
    in the same order wherever they interpolate. With `report_nonfinite`, returns
    (labels, has_nonfinite(lowres)).
    """
    labels = np.argmax(upsample_logits(lowres, out_hw), axis=0).astype(np.uint8)
    return (labels, has_nonfinite(lowres)) if report_nonfinite else labels


def argmax(logits, report_nonfinite=False):
    """Per-pixel class of (K, H, W) float32/float16 logits; NaN counts as -inf and the lowest
    index wins a tie (+inf against +inf too). With `report_nonfinite`, returns
    (labels, has_nonfinite(logits))."""
    logits = check_logits("argmax", logits)
    labels = np.argmax(np.where(np.isnan(logits), -np.inf, logits), axis=0).astype(np.uint8)
    return (labels, has_nonfinite(logits)) if report_nonfinite else labels


def blend(frame_bgr, labels, palette_rgb, alpha, out=None):
    """Overlay label colours on a BGR frame.

    With a = floor(alpha * 256 + 0.5) and c the palette colour of the pixel's label (the RGB
    palette is applied as BGR), each channel becomes ((256 - a) * frame + a * c + 128) >> 8,
    i.e. rounded half up. Labels >= K (e.g. 255 = ignore) keep the frame pixel. Labels of
    another size than the frame are sampled nearest-neighbour with `nearest_indices`
    (label row floor(y * h / H), column floor(x * w / W)). `out` may be the frame itself.
    """
    op = "blend"
    frame = check_frame(op, frame_bgr)
    labels = check_array(op, "labels", labels, (np.uint8,), 2, "(h, w)")
    palette = check_array(op, "palette_rgb", palette_rgb, (np.uint8,), 2, "(K, 3)")
    if palette.shape[1] != 3 or palette.shape[0] > MAX_CLASSES:
        raise OpsInputError(f"{op}: palette_rgb must have shape (K, 3) with K <= {MAX_CLASSES}, "
                            f"got {palette.shape}")
    weight = quantise_alpha(op, alpha)
    height, width = frame.shape[:2]
    if labels.shape != (height, width):
        rows = nearest_indices(labels.shape[0], height)
        cols = nearest_indices(labels.shape[1], width)
        labels = labels[rows][:, cols]
    classes = palette.shape[0]
    colour_bgr = palette[:, ::-1].astype(np.int32)[np.minimum(labels, classes - 1)]
    pixels = frame.astype(np.int32)
    mixed = ((ALPHA_ONE - weight) * pixels + weight * colour_bgr + ALPHA_ONE // 2) >> 8
    result = np.where((labels < classes)[:, :, None], mixed, pixels).astype(np.uint8)
    return deliver(op, result, out)
