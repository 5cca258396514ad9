"""Pixel-wise segmentation losses shared by the methods (docs/methods/stpg.md §4).

All of them stay on the device of their inputs and never synchronise with the host: counts
and thresholds are tensors, conditions are masks. Where a loss would divide by zero (no pixel
left), it returns 0 instead of NaN, so one empty crop cannot poison the optimiser state.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255

# Per-class weights of the Cityscapes OHEM loss, in trainId order (STPG/CPCL code).
CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
    0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507,
)

REDUCTIONS = ("all_pixels", "valid_pixels", "positive_only")


def ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy averaged over the pixels whose target is not `ignore_index`."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    valid = (target != ignore_index).sum()
    return per_pixel.sum() / valid.clamp_min(1)


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                ignore_index: int = IGNORE_INDEX, reduction: str = "all_pixels") -> torch.Tensor:
    """sum_p weight_p * CE_p over a normaliser chosen by `reduction`.

    `weight` is per pixel (B,H,W) or anything broadcastable to it, e.g. (B,1,1) for a per-image
    weight. Ignored pixels contribute 0 to the sum. Normalisers:
      all_pixels    B*H*W, ignored pixels included (STPG L_gen / L_pro, CPCL);
      valid_pixels  pixels whose target is not ignored (LPL's CCE term);
      positive_only pixels with CE > 0 (CSS's unsupervised term).
    """
    return weighted_nll(torch.log_softmax(logits, dim=1), target, weight, ignore_index, reduction)


def weighted_nll(log_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | float = 1.0,
                 ignore_index: int = IGNORE_INDEX, reduction: str = "all_pixels") -> torch.Tensor:
    """`weighted_ce` over given per-class log-probabilities (B,K,H,W), e.g. LPL's class-aware ones."""
    per_pixel = F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction="none")
    total = (weight * per_pixel).sum()
    if reduction == "all_pixels":
        return total / per_pixel.numel()
    if reduction == "valid_pixels":
        return total / (target != ignore_index).sum().clamp_min(1)
    if reduction == "positive_only":
        return total / (per_pixel > 0).sum().clamp_min(1)
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")


def ohem_keep_mask(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixels kept by probability-based OHEM, pooled over the batch (docs/methods/stpg.md §4).

    pi_p is the softmax probability of the true class. With at least `min_kept` valid pixels,
    tau = max(thresh, the min_kept-th smallest pi) and pixels with pi <= tau are kept; with
    fewer, every valid pixel is kept. The decision is a tensor, so nothing syncs.
    """
    if min_kept < 1:
        raise ValueError(f"min_kept must be >= 1, got {min_kept}")
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    with torch.no_grad():
        prob = torch.softmax(logits.detach().float(), dim=1)
        true_prob = prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        # Ignored pixels get probability 1, so the k smallest are valid ones whenever there
        # are at least k valid pixels, which is the only case in which tau is used.
        true_prob = torch.where(valid, true_prob, torch.ones_like(true_prob))
        flat = true_prob.reshape(-1)
        kth = torch.kthvalue(flat, min(min_kept, flat.numel())).values
        tau = torch.clamp(kth, min=thresh)
        mining = valid.sum() >= min_kept
    return valid & (~mining | (true_prob <= tau))


def ohem_ce(logits: torch.Tensor, target: torch.Tensor, *, min_kept: int, thresh: float = 0.7,
            class_weights: Sequence[float] | torch.Tensor | None = None,
            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """OHEM cross-entropy: sum_p w_{y_p} CE_p / sum_p w_{y_p} over the kept pixels.

    STPG's Cityscapes setting is thresh 0.7, min_kept = 50000 * B and
    CITYSCAPES_CLASS_WEIGHTS; CSS uses it without class weights. Returns 0 if nothing is kept.
    In a training loop pass `class_weights` as a tensor already on the logits' device: a
    Python sequence is copied to the device on every call.
    """
    keep = ohem_keep_mask(logits, target, thresh, min_kept, ignore_index)
    safe_target = torch.where(keep, target, torch.zeros_like(target))
    per_pixel = F.cross_entropy(logits, safe_target, reduction="none")
    if class_weights is None:
        pixel_weight = keep.to(per_pixel.dtype)
    else:
        weights = torch.as_tensor(class_weights, dtype=per_pixel.dtype, device=per_pixel.device)
        pixel_weight = weights[safe_target] * keep
    return (pixel_weight * per_pixel).sum() / pixel_weight.sum().clamp_min(torch.finfo(per_pixel.dtype).tiny)


def class_aware_log_probs(logits: torch.Tensor, present: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(e^{z_c} / (sum_j k_j e^{z_j} + eps) + eps) for every class c: LPL's class-aware log-softmax.

    `present` is the image-level class-presence vector k, (B,K); only the denominator is
    restricted to it. Absent classes keep their own e^{z_c} in the numerator, as the official
    code does (its mask on the log is commented out), so an image with no present class gets
    log(e^{z_c} / eps + eps), unbounded above. The code exponentiates raw logits and overflows
    above ~88.7 in float32; here the same quantity is formed in the log domain (logaddexp with
    log eps), so it is equal wherever the code is finite and finite everywhere else
    (docs/methods/lpl.md).
    """
    mask = present.bool().reshape(*present.shape, *([1] * (logits.dim() - 2)))
    log_eps = torch.log(torch.tensor(eps, dtype=logits.dtype, device=logits.device))
    log_denominator = torch.logaddexp(torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=1, keepdim=True),
                                      log_eps)
    # contiguous: the network's logits may be channels_last, which nll_loss's backward refuses
    return torch.logaddexp(logits - log_denominator, log_eps).contiguous()


def class_aware_labels(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """argmax of the class-aware softmax: the best class among those present in the image."""
    mask = present.bool().reshape(*present.shape, *([1] * (logits.dim() - 2)))
    return logits.masked_fill(~mask, float("-inf")).argmax(dim=1)
