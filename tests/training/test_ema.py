"""EMA teachers: docs/methods/stpg.md §1 and T12."""
import pytest
import torch
from torch import nn

from training.methods.ema import copy_params, ema_update, warm_start_decay


def _net():
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1))
    net[2].requires_grad_(False)  # like STPG's frozen projection head: still averaged
    return net


def _fill(net, value):
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def test_one_step_t12():
    teacher, student = _net(), _net()
    _fill(teacher, 1.0)
    _fill(student, 0.0)
    ema_update(teacher, student, 0.99)
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.99))
    ema_update(teacher, student, 0.99)  # 0.99 * 0.99
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.9801))


def test_mix_of_values():
    teacher, student = _net(), _net()
    _fill(teacher, 2.0)
    _fill(student, 4.0)
    ema_update(teacher, student, 0.9)  # 0.9 * 2 + 0.1 * 4
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 2.2))
    for p in student.parameters():
        assert torch.equal(p, torch.full_like(p, 4.0))


def test_every_parameter_follows_buffers_do_not():
    teacher, student = _net(), _net()
    _fill(teacher, 1.0)
    _fill(student, 0.0)
    teacher[1].running_mean.fill_(5.0)
    teacher[1].num_batches_tracked.fill_(7)
    student[1].running_mean.fill_(-3.0)
    ema_update(teacher, student, 0.5)
    assert torch.equal(teacher[1].running_mean, torch.full((3,), 5.0))
    assert int(teacher[1].num_batches_tracked) == 7
    followed = {name for name, p in teacher.named_parameters() if torch.allclose(p, torch.full_like(p, 0.5))}
    assert followed == {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"}


def test_copy_params_copies_parameters_only():
    teacher, student = _net(), _net()
    student[1].running_var.fill_(9.0)
    copy_params(teacher, student)
    for (_, pt), (_, ps) in zip(teacher.named_parameters(), student.named_parameters()):
        assert torch.equal(pt, ps)
        assert pt.data_ptr() != ps.data_ptr()
    assert torch.equal(teacher[1].running_var, torch.ones(3))


def test_architecture_mismatch_is_refused():
    with pytest.raises(ValueError, match="parameter names"):
        ema_update(_net(), nn.Sequential(nn.Conv2d(2, 3, 1)), 0.99)


def test_update_runs_outside_autograd():
    # In-place updates of leaf tensors that require grad raise unless autograd is off.
    teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
    copy_params(teacher, student)
    ema_update(teacher, student, 0.99)
    assert all(p.is_leaf and p.grad_fn is None for p in teacher.parameters())


@pytest.mark.parametrize("step, decay", [(0, 0.0), (1, 0.5), (2, 2 / 3), (99, 0.99), (500, 0.99)])
def test_warm_start_decay(step, decay):
    # min(1 - 1/(t+1), 0.99): docs/methods/css.md S3.
    assert warm_start_decay(step, 0.99) == pytest.approx(decay)
