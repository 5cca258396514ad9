"""CPCL: two students that teach each other through the intersection and the union of their
pseudo-labels (docs/methods/cpcl.md; the official code's behaviour).

Roles: the conservative network N1 (evaluated) learns the labels both networks agree on; the
progressive network N2 learns a label on every pixel, where they disagree the one of the class
the class mismatch score marks as more disputed. There is no EMA teacher: the pseudo-labels come
from the current N1 and N2 under no-grad, in train mode (batch-statistic BN).
"""
from __future__ import annotations

import torch

from training.methods import losses, selection
from training.methods.base import Method, cutmix, mixed_pseudo_labels


def collaborative_labels(labels_1, confidence_1, labels_2, confidence_2, num_classes: int, eps: float):
    """(intersection label, its weight, union label, its weight) from the two networks' labels.

    Intersection: the common label, ignore elsewhere, weighted (c1 + c2) / 2 on every pixel.
    Union: the common label where they agree, weighted (c1 + c2) / 2; elsewhere the label of
    the network whose class has the larger mismatch weight, with that network's confidence.
    A tie goes to N2 (strict >), as the code does.
    """
    weights = selection.mismatch_weights(labels_1, labels_2, num_classes, eps=eps)
    agree = labels_1 == labels_2
    first_wins = weights[labels_1] > weights[labels_2]
    mean_confidence = (confidence_1 + confidence_2) / 2
    intersection = torch.where(agree, labels_1, torch.full_like(labels_1, losses.IGNORE_INDEX))
    union = torch.where(agree | first_wins, labels_1, labels_2)
    union_weight = torch.where(agree, mean_confidence, torch.where(first_wins, confidence_1, confidence_2))
    return intersection, mean_confidence, union, union_weight


def overlap(labels_1, labels_2, num_classes: int) -> torch.Tensor:
    """The code's logged overlap: the trace share of the +I confusion matrix,
    (#{y1 = y2} + K) / (N + K), so logs compare with the official ones."""
    return ((labels_1 == labels_2).sum() + num_classes) / (labels_1.numel() + num_classes)


class CPCL(Method):
    def __init__(self, train_cfg, context, build_network):
        super().__init__(train_cfg, context, build_network)
        self.p = train_cfg.cpcl
        self.conservative = build_network()  # N1
        self.progressive = build_network()  # N2: an independent random head, so the two differ

    def forward(self, batch, iteration, epoch):
        x, y = batch["image"], batch["label"]
        u0, u1, mask = batch["unlabeled"], batch["mix"], batch["mask"]

        # 1. mixed input: the boxes come from u1
        mixed = cutmix(u0, u1, mask)

        # 2. supervised, both networks
        sup = self.supervised_loss(self.conservative(x), y) + self.supervised_loss(self.progressive(x), y)

        # 3. both networks as their own teachers: un-mixed images, logits mixed with the box mask
        labels_1, confidence_1 = mixed_pseudo_labels(self.conservative, u0, u1, mask)
        labels_2, confidence_2 = mixed_pseudo_labels(self.progressive, u0, u1, mask)

        # 4. intersection and union labels from the batch's class mismatch score
        intersection, intersection_weight, union, union_weight = collaborative_labels(
            labels_1, confidence_1, labels_2, confidence_2, self.context.num_classes, self.p.mismatch_eps)

        # 5. N1 learns the intersection, N2 the union, each averaged over all pixels
        inter = losses.weighted_ce(self.conservative(mixed).float(), intersection, intersection_weight)
        uni = losses.weighted_ce(self.progressive(mixed).float(), union, union_weight)
        return {"loss": sup + self.unsup_weight(iteration) * (inter + uni), "sup": sup, "intersection": inter,
                "union": uni, "overlap": overlap(labels_1, labels_2, self.context.num_classes)}

    def param_groups(self, weight_decay):
        return self.conservative.param_groups(weight_decay) + self.progressive.param_groups(weight_decay)

    def evaluated_network(self):
        return self.conservative
