import subprocess
import sys
import textwrap

import pytest
import torch

from tests.training.tiny_data import make_tiny_dataset
from training import params
from training.engine import CheckpointError, Trainer


def tiny_values(tmp_path, method="stpg", **overrides) -> dict:
    """What makes params.yaml's train section tiny, with `overrides`, as params.section takes them."""
    # confidence threshold 0: on random data the memory bank would otherwise stay empty
    stpg = dict(memory_start_epoch=0, contrast_start_epoch=0, proximity_start_epoch=1, memory_conf_thresh=0.0)
    values = dict(method=method, device="cpu", precision="fp32", iters=4, batch_size=2, crop=[32, 32],
                  scales=[0.75, 1.0], workers=0, checkpoint_every=2, eval_every=1000, log_every=1,
                  checkpoint_dir=str(tmp_path / "ckpt"), stpg=stpg)
    return params.merged(values, overrides)


def tiny_cfg(tmp_path, method="stpg", **overrides):
    return params.section("train", **tiny_values(tmp_path, method, **overrides))


TINY_MODEL = dict(backbone="resnet18", output_stride=16, pretrained=None, proj_dim=16)
MODEL = params.section("model", **TINY_MODEL)
DATA = params.section("data")
NORM = dict(mean=DATA.mean, std=DATA.std)  # the input normalisation every Trainer takes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    manifest = make_tiny_dataset(root)
    pairs = [tuple(p) for p in manifest["train"]]
    return manifest, pairs[:2], pairs[2:]


def trainer(tmp_path, tiny, **overrides):
    manifest, labeled, unlabeled = tiny
    return Trainer(tiny_cfg(tmp_path, **overrides), MODEL, manifest, labeled, unlabeled, live_dir=None,
                   progress=False, **NORM)


@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "stpg"])
def test_methods_train_and_losses_are_finite(tmp_path, tiny, method):
    history = trainer(tmp_path, tiny, method=method, iters=2).fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in history.values())
    expected = {"supervised": {"sup"}, "mean_teacher": {"sup", "unsup"},
                "stpg": {"sup", "gen", "pro", "contrast", "selected"}}[method]
    assert {k.split("/")[1] for k in history if k.startswith("train/")} >= expected | {"loss", "lr"}


def test_dvclive_rows_carry_the_iteration_count(tmp_path, tiny):
    manifest, labeled, unlabeled = tiny
    cfg = tiny_cfg(tmp_path, method="supervised", iters=4, log_every=2)
    Trainer(cfg, MODEL, manifest, labeled, unlabeled, live_dir=str(tmp_path / "live"), progress=False, **NORM).fit()
    rows = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in rows] == ["step", "2", "4"]


def test_resume_is_exact(tmp_path, tiny):
    straight = trainer(tmp_path / "a", tiny)
    straight.fit()
    first = trainer(tmp_path / "b", tiny)
    first.fit(stop_after=2)  # "killed" after the checkpoint at iteration 2
    resumed = trainer(tmp_path / "b", tiny)
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(b["memory.counts"].sum()) > 0  # the memory bank was filled and resumed too


def test_resumed_run_keeps_the_timing_and_losses_of_every_iteration(tmp_path, tiny):
    first = trainer(tmp_path, tiny)
    first.fit(stop_after=2)
    resumed = trainer(tmp_path, tiny)
    history = resumed.fit()
    assert resumed.start_iteration == 2 and len(resumed.iteration_seconds) == 4
    assert resumed.iteration_seconds[:2] == first.iteration_seconds  # the first process's steps, from the checkpoint
    finished = trainer(tmp_path, tiny)  # nothing left to train: timing and losses come from the checkpoint
    assert finished.fit() == history and finished.iteration_seconds == resumed.iteration_seconds


@pytest.mark.parametrize("change", [dict(method="mean_teacher"), dict(iters=3), dict(lr=0.02)])
def test_checkpoint_of_another_run_is_not_resumed(tmp_path, tiny, capsys, change):
    """A finished 2-iteration run must not stamp its weights as a run with other settings."""
    trainer(tmp_path, tiny, method="supervised", iters=2).fit()
    capsys.readouterr()
    other = trainer(tmp_path, tiny, **{"method": "supervised", "iters": 2, **change})
    assert other.load_checkpoint() == 0
    [line] = capsys.readouterr().err.splitlines()
    key, value = next(iter(change.items()))
    assert f"belongs to another run (train.{key}: " in line and f"-> {value!r}" in line and "starting afresh" in line


def test_checkpoint_of_another_split_is_not_resumed(tmp_path, tiny, capsys):
    manifest, labeled, unlabeled = tiny
    trainer(tmp_path, tiny, method="supervised", iters=2).fit()
    cfg = tiny_cfg(tmp_path, method="supervised", iters=2)
    other = Trainer(cfg, MODEL, manifest, unlabeled[:2], labeled + unlabeled[2:], live_dir=None, progress=False,
                    **NORM)
    assert other.load_checkpoint() == 0
    assert "split.labeled" in capsys.readouterr().err


def test_changes_that_do_not_alter_learning_still_resume(tmp_path, tiny):
    trainer(tmp_path, tiny, method="supervised", iters=2).fit()
    again = trainer(tmp_path, tiny, method="supervised", iters=2, log_every=5, workers=1, eval_every=7)
    assert again.load_checkpoint() == 2


def test_damaged_checkpoint_is_named_with_the_fix(tmp_path, tiny):
    trainer(tmp_path, tiny, method="supervised", iters=2).fit()
    path = tmp_path / "ckpt/last.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last.pt is damaged or unreadable .*delete .*ckpt to start afresh"):
        trainer(tmp_path, tiny, method="supervised", iters=2).fit()


def test_poly_lr_reaches_optimizer(tmp_path, tiny):
    t = trainer(tmp_path, tiny, method="supervised", iters=2, lr=0.01)
    t.fit(stop_after=1)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # iteration 0: full rate
    t.fit()
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)


def test_ddp_two_processes_on_cpu(tmp_path, tiny):
    manifest, labeled, unlabeled = tiny
    script = tmp_path / "ddp_run.py"
    values = tiny_values(tmp_path, iters=2, scales=[1.0], checkpoint_every=100, checkpoint_dir=str(tmp_path / "ddp_ckpt"))
    script.write_text(textwrap.dedent(f"""
        import json, torch, torch.distributed as dist
        from training import params
        from training.engine import Trainer
        cfg = params.section("train", **{values!r})
        t = Trainer(cfg, params.section("model", **{TINY_MODEL!r}), {manifest!r}, {labeled!r}, {unlabeled!r},
                    live_dir=None, progress=False, **{NORM!r})
        assert t.dist.world_size == 2 and isinstance(t.step_module, torch.nn.parallel.DistributedDataParallel)
        # SyncBatchNorm is CUDA-only; on CPU (gloo) each rank keeps its own BN statistics
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in t.method.modules())
        t.fit()
        w = t.method.gen_student.head.classifier.weight.detach().clone()
        gathered = [torch.zeros_like(w) for _ in range(2)]
        dist.all_gather(gathered, w)
        assert torch.equal(gathered[0], gathered[1]), "students diverged across ranks"
        print("rank", dist.get_rank(), "ok")
    """))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                             str(script)], capture_output=True, text=True, timeout=600,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ok") == 2


def test_each_checkpoint_is_durable_before_training_goes_on(tmp_path, tiny, disk_log):
    run = trainer(tmp_path, tiny)
    run.fit(stop_after=2)
    assert disk_log.durable(run.checkpoint_path)
