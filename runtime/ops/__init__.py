"""The runtime's fused pre/post-processing ops.

`runtime.ops.reference` defines what each op computes. When the C extension is built
(`pip install -e .` compiles it), these names run it: OpenMP over rows, with the GIL released,
so pipeline threads overlap. Without it they are the NumPy reference, after one warning, so a
runtime without a compiler still works. `BACKEND` says which one is active ("c" or "numpy").

The ops run beside inference, so their idle OpenMP workers sleep instead of spinning (a
spinning worker takes the core that inference or the late worker needs): the OpenMP runtime
reads OMP_WAIT_POLICY once, when the extension loads it, and it is set to passive for that
moment unless the environment already chose.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from runtime.ops import reference
from runtime.ops.reference import LAYOUTS, OpsInputError


def _load_extension():
    chosen = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = chosen or "passive"
    try:
        from runtime.ops import _ops
    finally:  # other OpenMP runtimes loaded later (torch's) keep their own default
        if chosen is None:
            del os.environ["OMP_WAIT_POLICY"]
    return _ops


try:
    _ops = _load_extension()
except ImportError as exc:
    _ops = None
    BACKEND = "numpy"
    warnings.warn(f"runtime.ops: the C extension is not available ({exc}); using the much slower "
                  "NumPy reference. Build it with `pip install -e .` (needs a C compiler with OpenMP).",
                  RuntimeWarning, stacklevel=2)
else:
    BACKEND = "c"

__all__ = ["BACKEND", "LAYOUTS", "OpsInputError", "argmax", "blend", "get_num_threads",
           "preprocess", "set_num_threads", "upsample_argmax"]


def _thread_count(count) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise OpsInputError(f"set_num_threads: the thread count must be an int >= 1, got {count!r}")
    return count


if _ops is not None:

    def preprocess(frame_bgr, out_hw, mean, std, layout="nchw_float", dtype=np.float32, out=None, region=None):
        """Resize + BGR->RGB + normalise + HWC->CHW in one pass, letterboxed into `region`
        when given; see reference.preprocess.

        Float outputs are within 1e-6 of the reference (the C code folds /255, -mean and /std
        into one multiply-add); "nhwc_uint8" output and the padding are bit-identical.
        """
        op = "preprocess"
        height, width = reference.parse_size(op, "out_hw", out_hw, channels=3)
        mean = reference.parse_triplet(op, "mean", mean)
        std = reference.parse_triplet(op, "std", std, positive=True)
        as_bytes = reference.parse_layout(op, layout) == "nhwc_uint8"
        as_half = reference.parse_float_dtype(op, dtype) == np.float16
        region = reference.parse_region(op, region, (height, width))
        return _ops.preprocess(frame_bgr, height, width, mean, std, as_bytes, as_half, out, region)

    def upsample_argmax(lowres, out_hw, report_nonfinite=False):
        """Labels of align_corners=True upsampled logits, never materialised; identical to
        reference.upsample_argmax, non-finite logits included. Cells whose four low-resolution
        neighbours agree on a class by more than float rounding are filled with it; only the
        rest is interpolated. The inf/NaN check of `report_nonfinite` rides on the pass that
        reads every logit anyway."""
        height, width = reference.parse_size("upsample_argmax", "out_hw", out_hw)
        labels, nonfinite = _ops.upsample_argmax(lowres, height, width)
        return (labels, nonfinite) if report_nonfinite else labels

    def argmax(logits, report_nonfinite=False):
        """Per-pixel class of (K, H, W) logits, identical to reference.argmax; the inf/NaN
        check of `report_nonfinite` is part of the same pass."""
        labels, nonfinite = _ops.argmax(logits)
        return (labels, nonfinite) if report_nonfinite else labels

    def blend(frame_bgr, labels, palette_rgb, alpha, out=None):
        """Colourise labels and alpha-blend them over the frame; bit-identical to reference.blend."""
        return _ops.blend(frame_bgr, labels, palette_rgb, reference.quantise_alpha("blend", alpha), out)

    def set_num_threads(count: int) -> None:
        """Threads each later op call uses (every calling thread alike; default OMP_NUM_THREADS
        or the core count)."""
        _ops.set_num_threads(_thread_count(count))

    def get_num_threads() -> int:
        return _ops.get_num_threads()

else:
    preprocess = reference.preprocess
    upsample_argmax = reference.upsample_argmax
    argmax = reference.argmax
    blend = reference.blend

    def set_num_threads(count: int) -> None:
        """Accepted for API parity; the NumPy reference always runs on one thread."""
        _thread_count(count)

    def get_num_threads() -> int:
        return 1
