"""Exponential-moving-average teachers (docs/methods/stpg.md §1).

Only parameters are averaged or copied: BN running buffers stay the teacher's own (STPG keeps
its teachers in train mode, so they normalise with batch statistics anyway).
"""
from __future__ import annotations

import torch
from torch import nn


def _paired_parameters(teacher: nn.Module, student: nn.Module):
    teacher_named = list(teacher.named_parameters())
    student_named = list(student.named_parameters())
    teacher_names = [name for name, _ in teacher_named]
    student_names = [name for name, _ in student_named]
    if teacher_names != student_names:
        raise ValueError("teacher and student have different parameter names; "
                         "build the teacher with the student's architecture (unwrap DDP first)")
    return [p for _, p in teacher_named], [p for _, p in student_named]


@torch.no_grad()
def copy_params(teacher: nn.Module, student: nn.Module) -> None:
    """Start the teacher at the student's weights; buffers are left as they are."""
    teacher_params, student_params = _paired_parameters(teacher, student)
    torch._foreach_copy_(teacher_params, student_params)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """theta_T <- decay * theta_T + (1 - decay) * theta_S for every parameter, in place."""
    teacher_params, student_params = _paired_parameters(teacher, student)
    torch._foreach_mul_(teacher_params, decay)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - decay)


def warm_start_decay(step: int, max_decay: float) -> float:
    """min(1 - 1/(t+1), alpha): the mean-teacher ramp (CSS); STPG uses a constant 0.99 instead.

    Step 0 copies the student, step 1 averages the two equally, and the decay reaches
    `max_decay` once 1/(t+1) <= 1 - max_decay.
    """
    return min(1.0 - 1.0 / (step + 1), max_decay)
