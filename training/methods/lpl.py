"""LPL stage 1: HybridNet and PseudoNet teach each other through the class-aware CE, the
cross-training term weighted by a running class IoU (docs/methods/lpl.md; the reference code's
behaviour by default).

Semi-and-weakly supervised: every training image comes with its image-level class-presence
vector k, so a pseudo label can only name a class the image shows. HybridNet (evaluated) learns
from the masks, from k (multi-label loss) and from PseudoNet's labels; PseudoNet learns from
HybridNet's labels. Neither has an EMA teacher: each is the other's, read under no-grad.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.data.splits import BACKGROUND_CLASS
from training.methods import losses
from training.methods.base import Method
from training.methods.selection import confusion_matrix


class RunningClassIoU(nn.Module):
    """Per-class IoU from exponentially decayed counts; buffers, so a resumed run continues it.

    Starts at T = 1, P = I = 0 (IoU 0, never a zero denominator). Each update first decays the
    counts, then adds the batch's: T_c ground-truth pixels (ignore excluded), P_c predicted
    pixels (ignore included, as the reference), I_c pixels where both say c.
    """

    def __init__(self, num_classes: int, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("target", torch.ones(num_classes, dtype=torch.float64))
        self.register_buffer("predicted", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("intersection", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def update(self, target: torch.Tensor, prediction: torch.Tensor) -> None:
        confusion = confusion_matrix(target, prediction, self.target.numel()).double()
        flat = prediction.reshape(-1)
        predicted = torch.zeros_like(self.predicted).index_add_(
            0, flat, torch.ones(1, dtype=torch.float64, device=flat.device).expand_as(flat))
        torch._foreach_mul_([self.target, self.predicted, self.intersection], self.decay)
        self.target += confusion.sum(dim=1)
        self.predicted += predicted
        self.intersection += confusion.diagonal()

    def iou(self) -> torch.Tensor:
        return self.intersection / (self.target + self.predicted - self.intersection)


def image_weights(iou: torch.Tensor, present: torch.Tensor, power: float) -> torch.Tensor:
    """s_b = (min over the image's classes of IoU'_c)^power, shape (B,).

    IoU' replaces an IoU of exactly 0 (e.g. a class not yet seen on the labeled half) by 1, as the
    reference does, so such a class never lowers the weight; an image without classes gets 1.
    """
    usable = torch.where(iou > 0, iou, torch.ones_like(iou))
    worst = torch.where(present.bool(), usable, torch.ones_like(usable)).amin(dim=1)
    return worst ** power


def classification_loss(logits: torch.Tensor, present: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Multi-label soft margin of each class's global max logit against k, over the foreground classes."""
    pooled = logits.amax(dim=(2, 3))
    return F.multilabel_soft_margin_loss(pooled[:, foreground], present[:, foreground].float())


def substitute_ground_truth(pseudo: torch.Tensor, label: torch.Tensor, has_label: torch.Tensor) -> torch.Tensor:
    """Images with a mask take it whole, ignore pixels included, in place of their pseudo label."""
    return torch.where(has_label.bool().reshape(-1, 1, 1), label, pseudo)


class LPL(Method):
    needs_image_classes = True

    def __init__(self, train_cfg, context, build_network):
        super().__init__(train_cfg, context, build_network)
        self.p = train_cfg.lpl
        self.hybrid = build_network()
        self.pseudo = build_network()  # independently initialised
        self.class_iou = RunningClassIoU(context.num_classes, self.p.iou_decay)
        background = BACKGROUND_CLASS.get(context.dataset)
        foreground = [c for c in range(context.num_classes) if c != background]
        self.register_buffer("foreground", torch.tensor(foreground), persistent=False)

    def forward(self, batch, iteration, epoch):
        p = self.p
        x, y, labeled_classes = batch["image"], batch["label"], batch["image_classes"]
        weak, weak_classes = batch["unlabeled"], batch["unlabeled_classes"]
        n = x.shape[0]
        present = torch.cat([labeled_classes, weak_classes])

        # 1. both networks on the labeled and the weak images as one batch (shared BN statistics)
        images = torch.cat([x, weak])
        hybrid_logits = self.hybrid(images).float()
        pseudo_logits = self.pseudo(images).float()
        hybrid_log_q = losses.class_aware_log_probs(hybrid_logits, present, p.cce_eps)
        pseudo_log_q = losses.class_aware_log_probs(pseudo_logits, present, p.cce_eps)

        # 2. class-aware pseudo labels of the weak images; those with a mask take it whole
        def pseudo_labels(logits):
            labels = losses.class_aware_labels(logits[n:].detach(), weak_classes)
            return substitute_ground_truth(labels, batch["unlabeled_label"], batch["unlabeled_has_label"])

        from_hybrid, from_pseudo = pseudo_labels(hybrid_logits), pseudo_labels(pseudo_logits)

        # 3. HybridNet learns the masks; PseudoNet learns HybridNet's labels (H teaches P)
        seg_hybrid = losses.weighted_nll(hybrid_log_q[:n], y, reduction="valid_pixels")
        seg_pseudo = losses.weighted_nll(pseudo_log_q[n:], from_hybrid, reduction="valid_pixels")

        # 4. HybridNet's image-level classification against k, background excluded
        cls = classification_loss(hybrid_logits, present, self.foreground)

        # 5. PseudoNet's running class IoU on the masks, updated before its weights are used
        self.class_iou.update(y, losses.class_aware_labels(pseudo_logits[:n].detach(), labeled_classes))
        weights = image_weights(self.class_iou.iou(), weak_classes, p.pct_power).float()

        # 6. progressive cross training: HybridNet learns PseudoNet's labels (P teaches H), all pixels
        pct = losses.weighted_nll(hybrid_log_q[n:], from_pseudo, weights.reshape(-1, 1, 1), reduction="all_pixels")
        return {"loss": seg_hybrid + seg_pseudo + cls + pct, "seg_hybrid": seg_hybrid, "seg_pseudo": seg_pseudo,
                "cls": cls, "pct": pct, "pct_weight": weights.mean()}

    def param_groups(self, weight_decay):
        return (self._groups(self.hybrid, weight_decay, poly=True)
                + self._groups(self.pseudo, weight_decay, poly=self.p.pseudo_net_poly))

    def _groups(self, network, weight_decay, poly):
        """The network's SGD groups with its final classifier conv split off at `classifier_lr_scale`."""
        classifier = {id(t) for t in network.head.classifier.parameters()}
        groups = []
        for group in network.param_groups(weight_decay):
            for in_classifier, scale in ((False, 1.0), (True, self.p.classifier_lr_scale)):
                params = [t for t in group["params"] if (id(t) in classifier) == in_classifier]
                if params:
                    groups.append({**group, "params": params, "lr_scale": scale, "poly": poly})
        return groups

    def evaluated_network(self):
        return self.hybrid
