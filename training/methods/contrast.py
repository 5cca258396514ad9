"""Prototypes, Hungarian anchor matching, the class-wise memory bank and the dual
anchor-contrastive loss (docs/methods/stpg.md §6).

Per iteration of the memory phase the reference does, in this order:
    features, labels = memory_filter(teacher_logits, gt, teacher_features)
    prototypes.update(features, labels)
    bank.insert(features, labels, n, prototypes.assigned_anchors if proximity phase else None)
    prototypes.assign(anchors)            # Hungarian; inserting used the previous assignment
and then `anchor_contrast_loss(student_features, labels, prototypes.assigned_anchors, bank)`.

Labels outside [0, K) (255 = ignore, or pixels the filter rejected) are carried along and
skipped by every consumer, so nothing is boolean-indexed and nothing syncs with the host,
except where a method says so. Per-class sums are one-hot matrix products: deterministic on
every device, unlike float atomics. These small reductions run in float32 with autocast off.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

IGNORE_INDEX = 255


def _class_bins(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels with everything outside [0, K) mapped to the spare bin K."""
    labels = labels.reshape(-1).long()
    in_range = (labels >= 0) & (labels < num_classes)
    return torch.where(in_range, labels, num_classes)


def _one_hot(bins: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K) float32 membership; the spare bin K matches no column."""
    return (bins[:, None] == torch.arange(num_classes, device=bins.device)[None, :]).float()


def nearest_downsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pick pixel (floor(i*H/h), floor(j*W/w)) of the last two dims: (4i, 4j) at stride 4.

    Works on any dtype (labels included, which F.interpolate does not take).
    """
    height, width = maps.shape[-2:]
    out_h, out_w = size
    rows = torch.arange(out_h, device=maps.device) * height // out_h
    cols = torch.arange(out_w, device=maps.device) * width // out_w
    return maps.index_select(-2, rows).index_select(-1, cols)


def _flatten_features(features: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B*h*w, D) in raster order (batch, row, column)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


class Prototypes(nn.Module):
    """Class centroids tracked by momentum, and their Hungarian match to fixed anchors.

    Buffers (so `state_dict` / `load_state_dict` / `.to()` resume exactly):
      centroids         (K, D) unit vectors, initialised from normalised N(0, I) draws;
      assigned_anchors  (K, D) row c is the anchor matched to class c (random unit vectors
                        until the first `assign`);
      assignment        (K,) anchor index per class, -1 before the first `assign`.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.9, seed: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.momentum = momentum
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("centroids", F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1))
        self.register_buffer("assigned_anchors",
                             F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1))
        self.register_buffer("assignment", torch.full((num_classes,), -1, dtype=torch.int64))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """mu_c <- normalize(m mu_c + (1-m) normalize(mean_f normalize(f))) for observed classes.

        features (N, D), labels (N,); classes with no feature keep their centroid.
        """
        with torch.autocast(features.device.type, enabled=False):
            member = _one_hot(_class_bins(labels, self.num_classes), self.num_classes)
            unit = F.normalize(features.detach().float(), dim=1)
            # The direction of the sum is the direction of the mean.
            batch_direction = F.normalize(member.T @ unit, dim=1)
            moved = F.normalize(self.momentum * self.centroids + (1.0 - self.momentum) * batch_direction, dim=1)
            observed = member.sum(dim=0) > 0
            self.centroids.copy_(torch.where(observed[:, None], moved, self.centroids))

    @torch.no_grad()
    def assign(self, anchors: torch.Tensor) -> torch.Tensor:
        """Match classes to anchors maximising sum_c mu_c . t_pi(c); returns pi as (K,) int64.

        Syncs: the (K, K) cosine matrix goes to the CPU for scipy's linear_sum_assignment.
        """
        if anchors.shape != self.centroids.shape:
            raise ValueError(f"anchors have shape {tuple(anchors.shape)}, prototypes expect "
                             f"{tuple(self.centroids.shape)}; use the anchor file made for this K and dim")
        anchors = anchors.to(self.centroids.device, self.centroids.dtype)
        cosine = (self.centroids.double() @ anchors.double().T).cpu().numpy()
        rows, cols = linear_sum_assignment(-cosine)
        permutation = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.int64)
        self.assignment.copy_(permutation)
        self.assigned_anchors.copy_(anchors[permutation.to(anchors.device)])
        return self.assignment


class MemoryBank(nn.Module):
    """Per-class FIFO of raw (unnormalised) features, newest first, `capacity` per class.

    Storage is one (K, capacity, D) buffer plus per-class counts, so insertion is a batched
    shift and the loss reads every class at once; slots past a class's count are zero.
    """

    def __init__(self, num_classes: int, dim: int, capacity: int = 256, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_classes = num_classes
        self.capacity = capacity
        self.register_buffer("features", torch.zeros(num_classes, capacity, dim, dtype=dtype))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def insert(self, features: torch.Tensor, labels: torch.Tensor, per_class: int,
               proximity_anchors: torch.Tensor | None = None) -> None:
        """Prepend up to `per_class` features of each class and drop what overflows capacity.

        features (N, D) in raster order, labels (N,) (outside [0, K) = not a candidate).
        A class with n_c <= per_class inserts all its features in raster order. Otherwise it
        inserts the `per_class` with the highest cosine to its row of `proximity_anchors`
        (the assigned anchors), closest first, or, without anchors, the first `per_class` in
        raster order.
        """
        num_rows = features.shape[0]
        if num_rows == 0:
            return
        k, capacity, dim = self.features.shape
        take_limit = min(per_class, capacity)
        features = features.detach().to(self.features.dtype)
        bins = _class_bins(labels, k)
        class_sizes = torch.zeros(k + 1, dtype=torch.int64, device=bins.device)
        class_sizes.index_add_(0, bins, torch.ones(1, dtype=torch.int64, device=bins.device).expand_as(bins))

        if proximity_anchors is None:
            order = torch.sort(bins, stable=True).indices
        else:
            anchors = proximity_anchors.to(features.device, features.dtype)
            cosine = (F.normalize(features, dim=1) * anchors[bins.clamp(max=k - 1)]).sum(dim=1)
            # Classes that fit entirely keep raster order: equal scores and stable sorts.
            ranked = class_sizes[bins] > per_class
            score = torch.where(ranked, cosine, torch.zeros_like(cosine))
            by_score = torch.sort(score, descending=True, stable=True).indices
            order = by_score[torch.sort(bins[by_score], stable=True).indices]

        starts = torch.cumsum(class_sizes, dim=0) - class_sizes
        taken = torch.clamp(class_sizes[:k], max=take_limit)  # (K,)
        rank = torch.arange(take_limit, device=bins.device)
        source = (starts[:k, None] + rank[None, :]).clamp(max=num_rows - 1)  # (K, take_limit)
        chosen = features[order[source]]  # (K, take_limit, D); rows past `taken` are masked below
        chosen = F.pad(chosen, (0, 0, 0, capacity - take_limit))

        slot = torch.arange(capacity, device=bins.device)[None, :]
        is_new = slot < taken[:, None]
        old_slot = slot - taken[:, None]
        is_old = (old_slot >= 0) & (old_slot < self.counts[:, None])
        old = self.features.gather(1, old_slot.clamp(min=0)[..., None].expand(-1, -1, dim))
        zeros = torch.zeros((), dtype=self.features.dtype, device=self.features.device)
        self.features.copy_(torch.where(is_new[..., None], chosen, torch.where(is_old[..., None], old, zeros)))
        self.counts.copy_(torch.clamp(self.counts + taken, max=capacity))

    def get(self, class_index: int) -> torch.Tensor:
        """The stored features of one class, newest first (syncs: reads the count)."""
        return self.features[class_index, : int(self.counts[class_index])]


def per_class_insertions(dataset: str, batch_size: int, num_labeled: int, num_classes: int,
                         memory_size: int = 256) -> int:
    """How many features per class enter the bank per iteration (docs/methods/stpg.md §6, quirks kept).

    Cityscapes (and the synthetic set, which uses its layout): B * max(1, round(256 / N_l)).
    VOC: B * max(1, floor(K/3 * round(256 / N_l))).
    """
    if num_labeled < 1:
        raise ValueError(f"num_labeled must be >= 1, got {num_labeled}")
    per_image = round(memory_size / num_labeled)
    if dataset in ("cityscapes", "synthetic"):
        return batch_size * max(1, int(per_image))
    if dataset == "voc":
        return batch_size * max(1, int(num_classes / 3 * per_image))
    raise ValueError(f"dataset must be cityscapes, synthetic or voc; got {dataset!r}")


@torch.no_grad()
def memory_filter(teacher_logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor,
                  conf_thresh: float = 0.95, ignore_index: int = IGNORE_INDEX):
    """Candidates for the memory bank: labeled pixels the teacher gets right and is sure of.

    teacher_logits (B, K, H, W) and ground truth (B, H, W) are taken at the feature grid
    (B, D, h, w) by nearest downsampling; a pixel stays where argmax == GT and max-prob >
    `conf_thresh`. Returns every feature as (B*h*w, D) in raster order with labels (B*h*w,)
    set to `ignore_index` where the pixel was rejected, so the filter needs no host sync.
    """
    size = tuple(features.shape[-2:])
    logits = nearest_downsample(teacher_logits, size)
    ground_truth = nearest_downsample(labels, size)
    confidence, prediction = torch.softmax(logits.float(), dim=1).max(dim=1)
    keep = (prediction == ground_truth) & (confidence > conf_thresh)
    kept_labels = torch.where(keep, ground_truth, torch.full_like(ground_truth, ignore_index))
    return _flatten_features(features.detach()), kept_labels.reshape(-1)


def anchor_contrast_loss(features: torch.Tensor, labels: torch.Tensor, assigned_anchors: torch.Tensor,
                         memory: MemoryBank | None, temperature: float = 0.5) -> torch.Tensor:
    """L_con = (1/K) sum_c ([|F_c| > 1] L_anc_c + [|F_c| > 1 and |M_c| > 1] L_sim_c).

    features (B, D, h, w) carry the gradient; labels (B, H, W) at full or feature resolution
    (nearest-downsampled to h x w; labels outside [0, K) are dropped); anchors and memory are
    constants. L_anc_c is the mean over F_c of -log softmax_k(f.a_k / temperature)[c] with
    unit f. L_sim_c is the mean over all pairs (f, m) of (1 - f.m) with unit f, m, computed as
    1 - mean(f) . mean(m): by bilinearity of the dot product,
        (1/|F||M|) sum_f sum_m (1 - f.m) = 1 - ((1/|F|) sum_f f) . ((1/|M|) sum_m m),
    which costs O((|F| + |M|) D) instead of O(|F| |M| D). The sum is divided by K whatever the
    number of classes present.
    """
    num_classes = assigned_anchors.shape[0]
    if labels.shape[-2:] != features.shape[-2:]:
        labels = nearest_downsample(labels, tuple(features.shape[-2:]))
    with torch.autocast(features.device.type, enabled=False):
        unit = F.normalize(_flatten_features(features).float(), dim=1)
        anchors = assigned_anchors.detach().to(unit.device, unit.dtype)
        bins = _class_bins(labels, num_classes)
        member = _one_hot(bins, num_classes)
        class_sizes = member.sum(dim=0)

        logits = unit @ anchors.T / temperature
        own_logit = logits.gather(1, bins.clamp(max=num_classes - 1)[:, None]).squeeze(1)
        anchor_ce = torch.logsumexp(logits, dim=1) - own_logit
        anchor_term = (member.T @ anchor_ce) / class_sizes.clamp(min=1)
        enough_features = class_sizes > 1
        total = torch.where(enough_features, anchor_term, torch.zeros_like(anchor_term)).sum()

        if memory is not None:
            # Unused slots hold zeros, which stay zero when normalised and add nothing.
            stored = F.normalize(memory.features.detach().to(unit.device, unit.dtype), dim=2)
            memory_mean = stored.sum(dim=1) / memory.counts.clamp(min=1)[:, None]
            feature_mean = (member.T @ unit) / class_sizes.clamp(min=1)[:, None]
            similarity_term = 1.0 - (feature_mean * memory_mean).sum(dim=1)
            active = enough_features & (memory.counts > 1)
            total = total + torch.where(active, similarity_term, torch.zeros_like(similarity_term)).sum()
    return total / num_classes


# ---- CSS: a zero-initialised prototype bank and prototype-positive InfoNCE (docs/methods/css.md) ----

class PrototypeBank(nn.Module):
    """Un-normalised class prototypes: zero until a class is first seen, then a momentum average
    of its batch means. "Unset" is the CSS code's test, a sum of the components equal to 0, so a
    seen prototype whose components happen to cancel is refilled too.

    Under torch.distributed the batch means pool every rank's pixels and a class moves wherever
    any rank saw it, so all ranks keep the same prototypes and a checkpoint of one rank resumes
    them all. Buffer: `vectors` (K, D).
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.99):
        super().__init__()
        self.num_classes = num_classes
        self.momentum = momentum
        self.register_buffer("vectors", torch.zeros(num_classes, dim))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """P_c <- m_c if sum(P_c) == 0, else momentum * P_c + (1 - momentum) * m_c.

        features (B, D, h, w), labels (B, h, w); m_c is the mean feature of class c, and a class
        without a pixel (labels outside [0, K) belong to none) keeps P_c.
        """
        with torch.autocast(features.device.type, enabled=False):
            member = _one_hot(_class_bins(labels, self.num_classes), self.num_classes)
            sums = member.T @ _flatten_features(features.detach()).float()
            counts = member.sum(dim=0)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(sums)
                torch.distributed.all_reduce(counts)
            means = sums / counts.clamp(min=1)[:, None]
            unset = self.vectors.sum(dim=1, keepdim=True) == 0
            moved = torch.where(unset, means, self.momentum * self.vectors + (1.0 - self.momentum) * means)
            self.vectors.copy_(torch.where((counts > 0)[:, None], moved, self.vectors))


def prototype_cosines(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) cosine of every feature (B, D, h, w) to every prototype (K, D); 0 to a zero prototype."""
    with torch.autocast(features.device.type, enabled=False):
        unit = F.normalize(features.float(), dim=1)
        return torch.einsum("bdhw,kd->bkhw", unit, F.normalize(prototypes.float(), dim=1))


def negative_class_probabilities(prototypes: torch.Tensor, present: torch.Tensor,
                                 temperature: float) -> torch.Tensor:
    """(K, K): row c is softmax_j(cos(P_c, P_j) / temperature) over the present classes j != c.

    Entries outside that set are 0, and so is a row with no candidate at all.
    """
    unit = F.normalize(prototypes.float(), dim=1)
    eye = torch.eye(len(unit), dtype=torch.bool, device=unit.device)
    candidate = present[None, :] & ~eye
    logits = (unit @ unit.T / temperature).masked_fill(~candidate, float("-inf"))
    return torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)


def _grouped(bins: torch.Tensor, num_classes: int):
    """Pixel indices sorted by class (stable), each class's first position there, and its size."""
    order = torch.sort(bins, stable=True).indices
    sizes = torch.zeros(num_classes + 1, dtype=torch.int64, device=bins.device)
    sizes.index_add_(0, bins, torch.ones(1, dtype=torch.int64, device=bins.device).expand_as(bins))
    starts = torch.cumsum(sizes, dim=0) - sizes
    return order, starts[:num_classes], sizes[:num_classes]


def _uniform_members(grouped, classes: torch.Tensor) -> torch.Tensor:
    """One uniformly drawn pixel index of each entry of `classes`, with replacement.

    An empty class yields some in-range index; the caller masks what it computes from it.
    """
    order, starts, sizes = grouped
    size = sizes[classes]
    offset = (torch.rand(classes.shape, device=classes.device) * size).long()
    offset = torch.minimum(offset, size - 1).clamp(min=0)
    return order[(starts[classes] + offset).clamp(max=order.numel() - 1)]


COSINE_BLOCK = 2 ** 26  # the most anchor-key cosines held at once (256 MiB in float32)


def _info_nce(anchors, positives, keys, negative_index, temperature: float) -> torch.Tensor:
    """Per class of a block: mean_q -log softmax([a_q.p, a_q.n_q1, ..., a_q.n_qN] / t)[0] over unit vectors.

    anchors (C, Q, D), positives (C, D), keys (P, D), negative_index (C, Q, N) -> (C,). The
    anchor-key cosines are one (C, Q, P) product over every key pixel, then picked out: a matrix
    product instead of a gathered (C, Q, N, D) block of keys, which costs memory traffic rather
    than arithmetic. Backward needs the anchors, keys and indices, not the cosines, so the block
    lives only until the pick.
    """
    negatives = torch.matmul(anchors, keys.T).gather(2, negative_index)
    positive = torch.einsum("cqd,cd->cq", anchors, positives)[..., None]
    logits = torch.cat([positive, negatives], dim=2) / temperature
    return (torch.logsumexp(logits, dim=2) - logits[..., 0]).mean(dim=1)


def prototype_infonce_loss(features: torch.Tensor, labels: torch.Tensor, hard: torch.Tensor,
                           prototypes: torch.Tensor, num_queries: int = 256, num_negatives: int = 512,
                           temperature: float = 0.5) -> torch.Tensor:
    """CSS's contrast: hard anchors against their class prototype and similarity-drawn negatives.

    features (B, D, h, w) carry the gradient; labels (B, h, w) give each pixel's class in the
    valid set (outside [0, K) = not valid); hard (B, h, w) marks the anchor candidates;
    prototypes (K, D) are the positives, constants. A class is present if it has a valid pixel.
    For each present class c with a hard pixel: `num_queries` anchors drawn uniformly from its
    hard pixels, each with `num_negatives` keys, drawn by first choosing a class j with
    `negative_class_probabilities` and then a uniform valid pixel of j; the class loss is the
    InfoNCE of cosines over `temperature` with the prototype as the positive. The sum of class
    losses is divided by the number of present classes, classes without hard pixels included,
    and the loss is 0 with at most one class present. Every draw is a device tensor, so nothing
    syncs. Classes go through `_info_nce` in blocks of at most COSINE_BLOCK cosines, so memory is
    bounded for any number of key pixels P.
    """
    num_classes = prototypes.shape[0]
    with torch.autocast(features.device.type, enabled=False):
        unit = F.normalize(_flatten_features(features).float(), dim=1)
        keys = unit.detach()
        bins = _class_bins(labels, num_classes)
        valid = _grouped(bins, num_classes)
        hard_set = _grouped(torch.where(hard.reshape(-1), bins, num_classes), num_classes)
        present = valid[2] > 0
        classes = torch.arange(num_classes, device=unit.device)

        anchors = unit[_uniform_members(hard_set, classes[:, None].expand(-1, num_queries))]  # (K, Q, D)
        cumulative = negative_class_probabilities(prototypes, present, temperature).cumsum(dim=1)
        draws = torch.rand(num_classes, num_queries * num_negatives, device=unit.device) * cumulative[:, -1:]
        negative_classes = torch.searchsorted(cumulative, draws, right=True).clamp(max=num_classes - 1)
        negative_index = _uniform_members(valid, negative_classes).reshape(num_classes, num_queries, num_negatives)
        positives = F.normalize(prototypes.detach().float(), dim=1)

        block = max(1, COSINE_BLOCK // (num_queries * keys.shape[0]))  # classes per product
        class_losses = torch.cat([
            _info_nce(anchors[c:c + block], positives[c:c + block], keys, negative_index[c:c + block], temperature)
            for c in range(0, num_classes, block)])
        counted = present & (hard_set[2] > 0)
        total = torch.where(counted, class_losses, torch.zeros_like(class_losses)).sum()
        num_present = present.sum()
        return torch.where(num_present > 1, total / num_present.clamp(min=1), torch.zeros_like(total))
