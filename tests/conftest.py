import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training import params

ROOT = Path(__file__).resolve().parents[1]


def params_copy(path: Path, base: Path = params.PROJECT_PARAMS, **sections) -> Path:
    """The params file `base` (the project's) with `sections` laid over it (nested via dicts), written to `path`."""
    raw = params.merged(yaml.safe_load(base.read_text()), sections)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def params_file(tmp_path):
    """`params_file(train={"iters": 1})`: a params.yaml copy in tmp_path with those keys changed."""
    return lambda **sections: params_copy(tmp_path / "params.yaml", **sections)


def _project_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


@pytest.fixture
def project_copy(tmp_path):
    """A throw-away copy of the working tree (a git repo with DVC), and a runner for commands in it.

    `run(*args)` runs with the venv's bin first on PATH so `dvc` stages find this Python.
    `set_params(section, **values)` overrides params.yaml keys (nested via dicts).
    """
    dest = tmp_path / "project"
    for rel in _project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    for built in ROOT.glob("runtime/ops/*.so"):  # the C extension built by `pip install -e .`
        shutil.copy2(built, dest / built.relative_to(ROOT))
    # A committed repo like a fresh clone (dvclive refuses a repo without commits).
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost", "commit", "-qm", "copy"],
                   cwd=dest, check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(dest), DVC_NO_ANALYTICS="1")

    def run(*args, check=True, timeout=900):
        result = subprocess.run(list(args), cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def set_params(section, **values):
        params_copy(dest / "params.yaml", dest / "params.yaml", **{section: values})

    run.root = dest
    run.set_params = set_params
    return run


class DiskLog:
    """What reached the disk, in order: ("fsync", path) and ("rename", source, target) events.

    Stands in for a power cut: a final name is durable only if its data was synced before the
    rename that made it and its folder after.
    """

    def __init__(self):
        self.events: list[tuple] = []

    def durable(self, path) -> bool:
        """`path` took its name by a rename after its data was synced (for a folder: every file and
        folder now in it, under the name it had then) and its parent folder was synced after."""
        path = os.path.realpath(path)
        inside = [""]
        if os.path.isdir(path):
            inside += [os.path.relpath(os.path.join(root, name), path)
                       for root, dirs, names in os.walk(path) for name in dirs + names]
        for i, event in enumerate(self.events):
            if event[0] == "rename" and event[2] == path:
                before = self.events[:i]
                synced_before = all(("fsync", os.path.normpath(os.path.join(event[1], rel))) in before
                                    for rel in inside)
                if synced_before and ("fsync", os.path.dirname(path)) in self.events[i + 1:]:
                    return True
        return False


@pytest.fixture
def disk_log(monkeypatch):
    """Spy on os.fsync and os.replace (the only ways this project makes a file durable and final)."""
    log = DiskLog()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target, **kwargs):
        log.events.append(("rename", os.path.realpath(source), os.path.realpath(target)))
        real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log
