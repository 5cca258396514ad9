"""Bad inputs and faults through the stage command lines: python -m training.train / .split /
.evaluate and python -m export.run (cases 1, 6-11, 16, 17 and 20 of issue 12).

Each of these imports torch, which takes seconds, so the subprocess cases are all started at
once when the module begins and each test waits for its own. Disk faults are injected at the
write call (a file object whose disk fills up), running the command's real entry in-process.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tqdm import tqdm

from tests.reliability.harness import ENV, REPO, FillingFile, assert_refused, command, files_in, run
from tests.training.tiny_data import make_tiny_dataset
from training import engine

# Laid over the project's params.yaml: tiny, fast, everything under the case's folder.
PARAMS = {
    "split": {"labeled_ratio": 2, "out_dir": "splits"},
    "model": {"backbone": "resnet18", "proj_dim": 16},
    "train": {"method": "supervised", "device": "cpu", "precision": "fp32", "iters": 2, "batch_size": 1,
              "crop": [32, 32], "scales": [1.0], "workers": 0, "checkpoint_every": 1, "eval_every": 0,
              "out": "model.pt", "checkpoint_dir": "ckpt"},
    "evaluate": {"mode": "whole", "crop": [32, 64]},
    "export": {"checkpoint": "model.pt", "out_dir": "export", "input_size": [32, 64], "precisions": ["fp32"],
               "verify_images": 1, "calibration_images": 1, "tensorrt": "off"},
}
UMASK = 0o027  # not the usual 022, so a mode that ignores the umask shows


def project_params(**sections) -> dict:
    """The project's params.yaml with PARAMS, then `sections`, laid over its sections' keys."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in raw.keys() & PARAMS.keys():
        raw[name] = {**raw[name], **PARAMS[name], **sections.get(name, {})}
    return raw


def write_params(folder: Path, **sections) -> None:
    (folder / "params.yaml").write_text(yaml.safe_dump(project_params(**sections)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 train / 1 val tiny images, their manifest (absolute paths) and a 2 / 2 split."""
    root = tmp_path_factory.mktemp("data")
    manifest = make_tiny_dataset(root / "dataset", n_train=4, n_val=1)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "splits").mkdir()
    for name, pairs in (("labeled.txt", manifest["train"][:2]), ("unlabeled.txt", manifest["train"][2:])):
        (root / "splits" / name).write_text("".join(f"{image} {label}\n" for image, label in pairs))
    return root


@pytest.fixture(scope="module")
def training_checkpoint(data, tmp_path_factory) -> Path:
    """A real checkpoints/train/last.pt: one iteration of `python -m training.train`, in-process."""
    folder = tmp_path_factory.mktemp("trained")
    write_params(folder, train={"iters": 1})
    shutil.copytree(data / "splits", folder / "splits")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["training.train", *map(str, train_args(data))])
        runpy.run_module("training.train", run_name="__main__")
    return folder / "ckpt" / "last.pt"


def train_args(data: Path) -> list:
    return ["--manifest", data / "manifest.json", "--splits", "splits", "--live-dir", "live"]


# ------------------------------------------------------------ the subprocess cases, all at once

@dataclasses.dataclass
class Started:
    process: subprocess.Popen
    folder: Path  # the case's working folder, where every output goes
    before: dict  # files_in(folder) at the start
    logs: Path

    def finish(self) -> tuple[int, str, str]:
        code = self.process.wait(timeout=600)
        return code, (self.logs / "stdout").read_text(), (self.logs / "stderr").read_text()


def case_negative_iters(folder, data, checkpoint):
    write_params(folder, train={"iters": -5})
    return "training.train", train_args(data)


def case_damaged_checkpoint(folder, data, checkpoint):
    write_params(folder)
    (folder / "ckpt").mkdir()
    (folder / "ckpt" / "last.pt").write_bytes(checkpoint.read_bytes()[:50_000])  # cut mid-write
    return "training.train", train_args(data)


def case_listed_image_missing(folder, data, checkpoint):
    write_params(folder)
    lines = (folder / "splits" / "labeled.txt").read_text().splitlines()
    lines[1] = "gone/frame_leftImg8bit.png " + lines[1].split()[1]
    (folder / "splits" / "labeled.txt").write_text("\n".join(lines) + "\n")
    return "training.train", train_args(data)


def case_every_image_labeled_for_stpg(folder, data, checkpoint):
    write_params(folder, train={"method": "stpg"})
    (folder / "splits" / "unlabeled.txt").write_text("")  # what split.labeled_ratio: 1 writes
    return "training.train", train_args(data)


def case_every_image_labeled_supervised(folder, data, checkpoint):
    write_params(folder, train={"iters": 1})
    (folder / "splits" / "unlabeled.txt").write_text("")
    return "training.train", train_args(data)


def case_training_checkpoint_to_evaluate(folder, data, checkpoint):
    write_params(folder)
    shutil.copy(checkpoint, folder / "last.pt")
    return "training.evaluate", ["--checkpoint", "last.pt", "--manifest", data / "manifest.json"]


def case_training_checkpoint_to_export(folder, data, checkpoint):
    write_params(folder, export={"checkpoint": "last.pt"})
    shutil.copy(checkpoint, folder / "last.pt")
    return "export.run", ["--manifest", data / "manifest.json"]


CASES = {name[len("case_"):]: fn for name, fn in list(globals().items()) if name.startswith("case_")}


@pytest.fixture(scope="module")
def started(data, training_checkpoint, tmp_path_factory) -> dict[str, Started]:
    runs = {}
    try:
        for name, prepare in CASES.items():
            folder = tmp_path_factory.mktemp(name)
            shutil.copytree(data / "splits", folder / "splits")
            target, args = prepare(folder, data, training_checkpoint)
            logs = tmp_path_factory.mktemp(f"{name}-logs")
            with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
                # no progress bars: stderr then holds only what the command has to say
                process = subprocess.Popen(command(target, *args), cwd=folder, env={**ENV, "TQDM_DISABLE": "1"},
                                           stdout=out, stderr=err, umask=UMASK)
            runs[name] = Started(process, folder, files_in(folder), logs)
        yield runs
    finally:
        for run_ in runs.values():
            if run_.process.poll() is None:
                run_.process.kill()


def refused(started, name: str, *words: str) -> str:
    """The case ended with one line holding `words`, exit 2, its folder as it was; the line."""
    case = started[name]
    code, _, err = case.finish()
    line = assert_refused(code, err, "error: ", *words)
    assert files_in(case.folder) == case.before
    return line


def test_case_1_negative_iterations_are_refused_at_load(started):
    """Case 10 (checkpoint_every 0, batch_size 0) takes the same path: tests/training/test_params.py."""
    refused(started, "negative_iters", "train.iters must be >= 1, got -5")


def test_case_8_damaged_checkpoint_is_named_with_how_to_start_afresh(started):
    refused(started, "damaged_checkpoint", "ckpt/last.pt is damaged", "delete ckpt to start afresh")


def test_case_11_missing_listed_image_is_found_before_training(started):
    refused(started, "listed_image_missing", "splits/labeled.txt", "gone/frame_leftImg8bit.png",
            "1 files that do not exist", "re-run `dvc repro split`")


def test_case_16_no_unlabeled_image_left_says_so_and_what_to_do(started):
    line = refused(started, "every_image_labeled_for_stpg", "needs unlabeled images but the split has none")
    assert "split.labeled_ratio" in line and "supervised" in line and "smaller" not in line


def test_case_16_and_20_supervised_trains_on_a_fully_labeled_split_and_writes_umask_modes(started):
    case = started["every_image_labeled_supervised"]
    code, out, err = case.finish()
    assert code == 0, err
    assert "supervised: 1 iterations -> model.pt" in out
    for artefact in (case.folder / "model.pt", case.folder / "ckpt" / "last.pt"):
        assert artefact.stat().st_mode & 0o777 == 0o666 & ~UMASK, artefact


@pytest.mark.parametrize("name", ["training_checkpoint_to_evaluate", "training_checkpoint_to_export"])
def test_case_17_training_checkpoint_is_recognised_and_the_right_file_named(started, name):
    refused(started, name, "last.pt is a training checkpoint", "use models/gen_student.pt")


# ------------------------------------------------------------------------ quick or in-process

def test_case_9_truncated_manifest_is_named_as_damaged(data, tmp_path):
    whole = (data / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(whole[: len(whole) // 2])
    write_params(tmp_path)
    before = files_in(tmp_path)
    result = run("training.split", "--manifest", "manifest.json", cwd=tmp_path)
    assert_refused(result.returncode, result.stderr, "error: dataset manifest manifest.json is damaged",
                   "dvc repro prepare")
    assert files_in(tmp_path) == before


def run_in_process(module: str, argv: list, monkeypatch, capsys) -> tuple[int, str]:
    """The command's own `__main__` in this process, so a test can stand in for a write call."""
    monkeypatch.setattr(sys, "argv", [module, *map(str, argv)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


def test_case_6_disk_full_at_the_second_checkpoint_keeps_the_first(data, tmp_path, monkeypatch, capsys):
    write_params(tmp_path)
    shutil.copytree(data / "splits", tmp_path / "splits")
    real_save = torch.save
    saves = []

    def save_on_a_filling_disk(obj, f, *args, **kwargs):
        saves.append(f)
        real_save(obj, FillingFile(f, room=4096) if len(saves) == 2 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_filling_disk)
    monkeypatch.setattr(engine, "tqdm", lambda *a, **k: tqdm(*a, **{**k, "disable": True}))  # stderr: the error alone
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process("training.train", train_args(data), monkeypatch, capsys)
    assert_refused(code, err, "error: cannot write ckpt/last.pt (No space left on device)", "free some space")
    assert len(saves) == 2 and sorted(files_in(tmp_path / "ckpt")) == ["last.pt"]
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["iteration"] == 1
    assert not (tmp_path / "model.pt").exists()


def test_case_7_read_only_export_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    write_params(tmp_path, export={"out_dir": "models/export"})
    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process("export.run", [], monkeypatch, capsys)
    assert_refused(code, err, "error: export.out_dir models/export", "Read-only file system",
                   "set export.out_dir")
    assert sorted(files_in(tmp_path)) == ["params.yaml"]


def test_case_7_on_a_real_read_only_file_system(tmp_path, small_file_system, monkeypatch, capsys):
    disk = small_file_system("readonly", 64 << 10, read_only=True)
    write_params(tmp_path, export={"out_dir": str(disk / "models" / "export")})
    monkeypatch.chdir(tmp_path)
    code, err = run_in_process("export.run", [], monkeypatch, capsys)
    assert_refused(code, err, "export.out_dir", "Read-only file system", "set export.out_dir")
