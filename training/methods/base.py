"""What every training method shares: the plug-in contract and the common pieces of a step.

A method is an nn.Module whose forward is one training step on a batch dict
(`image`, `label` labeled; `unlabeled`, `mask` (CutMix box mask) and `mix` unlabeled) and
returns named losses with the total under "loss". The engine owns the loop, the optimiser and
the checkpoints; the method owns its networks, its teachers and any further state, kept in buffers of
submodules (memory banks, prototypes) so `state_dict()` alone resumes it exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from training.methods import ema, losses
from training.schedules import sigmoid_rampup


@dataclass
class MethodContext:
    """What a method needs to know about the run besides its params."""
    num_classes: int
    dataset: str
    batch_size: int
    num_labeled: int
    iters_per_epoch: int
    mean: tuple[float, float, float]  # the input normalisation (data.mean / data.std)
    std: tuple[float, float, float]


class Method(nn.Module):
    needs_unlabeled = True
    needs_image_classes = False  # image-level labels of every training image (LPL)
    nesterov = False  # SGD with Nesterov momentum (CSS's recipe)
    min_lr = 0.0  # floor of the poly learning rate (CSS floors it at 1e-4)

    def __init__(self, train_cfg, context: MethodContext, build_network):
        super().__init__()
        self.cfg, self.context = train_cfg, context
        self.build_network = build_network
        weights = None
        if train_cfg.sup_loss == "ohem" and context.dataset == "cityscapes":
            weights = torch.tensor(losses.CITYSCAPES_CLASS_WEIGHTS)
        self.register_buffer("class_weights", weights, persistent=False)

    # -- the plug-in contract -------------------------------------------------------------
    def forward(self, batch: dict, iteration: int, epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict]:
        """SGD groups of every network the optimiser trains."""
        raise NotImplementedError

    def update_teachers(self, iteration: int) -> None:
        """Called after each optimiser step."""

    def evaluated_network(self) -> nn.Module:
        """The network evaluated and exported."""
        raise NotImplementedError

    # -- shared pieces --------------------------------------------------------------------
    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.cfg.sup_loss == "ohem":
            return losses.ohem_ce(logits.float(), target, thresh=self.cfg.ohem_thresh,
                                  min_kept=self.cfg.ohem_min_kept * logits.shape[0],
                                  class_weights=self.class_weights)
        return losses.ce(logits.float(), target)

    def unsup_weight(self, iteration: int) -> float:
        """train.unsup_weight under the sigmoid ramp-up over the first train.unsup_rampup of the run
        (docs/ssl_benchmark.md); a Python float, so no host sync."""
        return self.cfg.unsup_weight * sigmoid_rampup(iteration, self.cfg.unsup_rampup * self.cfg.iters)

    def make_teacher(self, student: nn.Module) -> nn.Module:
        """A fresh network holding a copy of the student's parameters, never trained by SGD.

        Kept in train mode for good (batch-statistic BN, active dropout), as STPG's code does
        (docs/methods/stpg.md §1).
        """
        teacher = copy.deepcopy(student)
        ema.copy_params(teacher, student)
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        return teacher

    def train(self, mode: bool = True):
        super().train(mode)
        for teacher in self.teachers():
            teacher.train()
        return self

    def teachers(self) -> list[nn.Module]:
        return []


def mixed_pseudo_labels(teacher: nn.Module, u0: torch.Tensor, u1: torch.Tensor, mask: torch.Tensor):
    """Pseudo-labels and confidences of the teacher's logits mixed with the CutMix mask.

    The teacher sees the un-mixed images; mixing logits with a binary mask equals mixing its
    labels and confidences. Computed under inference_mode, then cloned so autograd can
    save them as loss weights.
    """
    with torch.inference_mode():
        m = mask.unsqueeze(1).to(u0.dtype)
        logits = teacher(u0) * (1 - m) + teacher(u1) * m
        confidence, label = torch.softmax(logits.float(), dim=1).max(dim=1)
    return label.clone(), confidence.clone()


def cutmix(u0: torch.Tensor, u1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Boxes (mask 1) come from the paste source u1."""
    m = mask.unsqueeze(1).to(u0.dtype)
    return u0 * (1 - m) + u1 * m
