"""Device and autocast precision from the `train.device` / `train.precision` settings.

Kept apart from the engine so that evaluation and the step benchmark can use them without
importing the training loop (which itself imports evaluation).
"""
from __future__ import annotations

import torch

from training.params import ParamsError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device is cuda but no CUDA device is visible; set train.device: auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. auto = bf16 where the hardware has it."""
    if name == "fp32":
        return None
    if name == "fp16":
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def precision_name(autocast_dtype: torch.dtype | None) -> str:
    """How a row or report names the precision a network trained in: float32, bfloat16, float16."""
    return str(autocast_dtype or torch.float32).removeprefix("torch.")
