"""The naive OpenCV/NumPy chains that the fused ops replace: the benchmark baselines.

Same signatures and input checks as runtime.ops. They agree with the reference within the
tolerances tests/runtime/test_ops.py states, not bit for bit: OpenCV rounds the resized frame
to bytes before normalising, quantises warp coordinates to 1/32 pixel, blends in floats and
computes nearest-neighbour positions in floating point.
"""
from __future__ import annotations

import cv2
import numpy as np

from runtime.ops import reference


def preprocess(frame_bgr, out_hw, mean, std, layout="nchw_float", dtype=np.float32, out=None):
    """cv2.dnn.blobFromImage, then / std (or cv2.resize + cvtColor for "nhwc_uint8")."""
    op = "preprocess"
    frame = reference.check_frame(op, frame_bgr)
    height, width = reference.parse_size(op, "out_hw", out_hw, channels=3)
    mean = np.array(reference.parse_triplet(op, "mean", mean), dtype=np.float32)
    std = np.array(reference.parse_triplet(op, "std", std, positive=True), dtype=np.float32)
    layout = reference.parse_layout(op, layout)
    out_dtype = reference.parse_float_dtype(op, dtype)
    if layout == "nhwc_uint8":
        resized = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        return reference.deliver(op, cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), out)
    # blobFromImage subtracts the mean before scaling: (pixel - 255 mean) / 255 = pixel / 255 - mean.
    # With swapRB the mean is given in RGB order.
    blob = cv2.dnn.blobFromImage(frame, 1.0 / 255, (width, height), tuple(float(m) * 255 for m in mean),
                                 swapRB=True, crop=False)[0]
    blob /= std[:, None, None]
    return reference.deliver(op, blob.astype(out_dtype, copy=False), out)


def upsample_argmax(lowres, out_hw):
    """Per-channel OpenCV upsample to full resolution, then np.argmax.

    cv2.resize samples half-pixel centres, which is not the network's align_corners=True
    mapping (labels would shift by up to half a low-res pixel); the same per-channel upsample
    with that mapping is cv2.warpAffine with the scale matrix.
    """
    op = "upsample_argmax"
    logits = reference.check_logits(op, lowres)
    height, width = reference.parse_size(op, "out_hw", out_hw)
    _, h, w = logits.shape
    to_source = np.array([[(w - 1) / max(width - 1, 1), 0.0, 0.0],
                          [0.0, (h - 1) / max(height - 1, 1), 0.0]])
    upsampled = np.stack([
        cv2.warpAffine(channel, to_source, (width, height),
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        for channel in logits.astype(np.float32, copy=False)
    ])
    return np.argmax(upsampled, axis=0).astype(np.uint8)


def upsample_argmax_shortcut(lowres, out_hw):
    """The lossy shortcut taken instead of upsample + argmax: np.argmax of the low-resolution
    logits, then a nearest-neighbour cv2.resize of the labels. Blocky class boundaries, up to
    half a low-resolution pixel off; a benchmark baseline, not the same labels."""
    op = "upsample_argmax"
    logits = reference.check_logits(op, lowres)
    height, width = reference.parse_size(op, "out_hw", out_hw)
    labels = np.argmax(logits, axis=0).astype(np.uint8)
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def argmax(logits):
    """np.argmax over the class axis."""
    logits = reference.check_logits("argmax", logits)
    return np.argmax(logits, axis=0).astype(np.uint8)


def blend(frame_bgr, labels, palette_rgb, alpha, out=None):
    """Palette LUT + cv2.addWeighted, ignored labels restored from the frame."""
    op = "blend"
    frame = reference.check_frame(op, frame_bgr)
    labels = reference.check_array(op, "labels", labels, (np.uint8,), 2, "(h, w)")
    palette = reference.check_array(op, "palette_rgb", palette_rgb, (np.uint8,), 2, "(K, 3)")
    if palette.shape[1] != 3:
        raise reference.OpsInputError(f"{op}: palette_rgb must have shape (K, 3), got {palette.shape}")
    alpha = reference.parse_alpha(op, alpha)
    height, width = frame.shape[:2]
    if labels.shape != (height, width):
        labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:len(palette)] = palette[:, ::-1]
    mixed = cv2.addWeighted(frame, 1.0 - alpha, lut[labels], alpha, 0.0)
    ignored = labels >= len(palette)
    mixed[ignored] = frame[ignored]
    return reference.deliver(op, mixed, out)
