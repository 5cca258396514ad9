"""The float16 training branch, which a GPU without bf16 (T4, V100, Jetson Xavier) takes under
`train.precision: auto`, run on the CPU: `train.precision: fp16` gives the engine the same
autocast dtype and the same enabled GradScaler, with torch.autocast("cpu", dtype=float16) in
place of CUDA's. A few tiny STPG iterations: finite losses, one injected overflow that the
scaler must skip and back off from, and an exact resume across it.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.training.test_engine import tiny  # noqa: F401 - the module-scoped tiny dataset fixture
from tests.training.test_engine import trainer
from training.device import resolve_precision

OVERFLOW_AT = 0  # the iteration whose loss is made infinite (fp16 steps are slow on a CPU: two in all)
# The engine's GradScaler starts at 2^16, where these untrained fp16 steps overflow by themselves
# for a few iterations until it has backed off (as on a GPU); starting at 2^8 leaves the injected
# overflow the only one, so the test knows which step is skipped. Backoff 0.5 is the default.
INIT_SCALE = 2.0 ** 8
BACKOFF = 0.5


def test_auto_takes_float16_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float16


def fp16_trainer(tmp_path, tiny):  # noqa: F811 - the fixture's value
    """A tiny STPG trainer in float16 whose loss at iteration OVERFLOW_AT is inf; it records the
    optimised parameters as each iteration begins."""
    run = trainer(tmp_path, tiny, precision="fp16", iters=2, checkpoint_every=1)
    assert run.scaler.is_enabled() and run.scaler.get_scale() == 2.0 ** 16
    run.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    run.params_at = {}
    step = run.step_module

    def overflowing_step(batch, iteration, epoch):
        run.params_at[iteration] = [p.detach().clone() for group in run.optimizer.param_groups
                                    for p in group["params"]]
        losses = step(batch, iteration, epoch)
        if iteration == OVERFLOW_AT:
            losses = {**losses, "loss": losses["loss"] * math.inf}
        return losses

    run.step_module = overflowing_step
    return run


def test_fp16_steps_skip_the_overflow_and_resume_exactly(tmp_path, tiny):  # noqa: F811
    straight = fp16_trainer(tmp_path / "a", tiny)
    assert straight.autocast_dtype == torch.float16 and straight.scaler.is_enabled()
    history = straight.fit()
    assert all(math.isfinite(value) for value in history.values()), history
    # The overflow's step was skipped: the parameters after iteration 0 are those before it,
    # while the clean step after it moved them.
    before, after = straight.params_at[OVERFLOW_AT], straight.params_at[OVERFLOW_AT + 1]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    final = [p.detach() for group in straight.optimizer.param_groups for p in group["params"]]
    assert not all(torch.equal(a, b) for a, b in zip(after, final))
    # One backoff and no growth since (growth waits 2000 clean steps): 2^8 * 0.5; one clean step.
    assert straight.scaler.get_scale() == INIT_SCALE * BACKOFF
    assert straight.scaler.state_dict()["_growth_tracker"] == 1

    first = fp16_trainer(tmp_path / "b", tiny)
    first.fit(stop_after=1)  # "killed" after the checkpoint at iteration 1, the backed-off scale in it
    resumed = fp16_trainer(tmp_path / "b", tiny)
    resumed.fit()
    assert resumed.start_iteration == 1
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
