"""The torch-free runtime install: `pip install '.[runtime]'` into a fresh virtual environment,
with the project's constraints.txt, builds the C ops and brings NumPy, OpenCV, ONNX Runtime and
PyAV but none of the training stack; runtime/segment.py then segments a tiny clip there with a
tiny exported model.

Slow (a virtual environment and an install); it still runs in `make test`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.bench.test_benchmark import write_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = {"numpy", "opencv-python-headless", "onnxruntime", "av", "pyyaml"}  # PyYAML: rig files
TRAINING_STACK = {"torch", "torchvision", "scipy", "onnx", "onnxslim", "dvc", "dvclive", "matplotlib", "pillow",
                  "tqdm"}
FRAMES = 6


def runtime_sources(dest: Path) -> Path:
    """The files `pip install '.[runtime]'` needs, copied so the build leaves the checkout alone."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "runtime", "pyproject.toml",
                             "setup.py", "README.md", "constraints.txt"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def write_clip(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 32))
    rng = np.random.default_rng(0)
    for _ in range(FRAMES):
        writer.write(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    writer.release()
    return path


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_runtime_extra_installs_without_torch_and_segments(tmp_path):
    project = runtime_sources(tmp_path / "project")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    # PIP_CONSTRAINT reaches the isolated build environment too (numpy's headers for the C ops).
    env = dict(os.environ, PIP_CONSTRAINT=str(project / "constraints.txt"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    run([python, "-m", "pip", "install", "-q", f"{project}[runtime]"], env=env, cwd=tmp_path, timeout=840)

    listed = json.loads(run([python, "-m", "pip", "list", "--format=json"], env=env, cwd=tmp_path).stdout)
    installed = {package["name"].lower() for package in listed}
    assert RUNTIME_PACKAGES <= installed
    assert not installed & TRAINING_STACK, f"the runtime install pulled {sorted(installed & TRAINING_STACK)}"
    probe = run([python, "-c", "import importlib.util, runtime.ops, runtime.segment\n"
                 "print(runtime.ops.BACKEND, importlib.util.find_spec('torch') is None, runtime.segment.__file__)"],
                env=env, cwd=tmp_path)
    backend, torch_missing, script = probe.stdout.split()
    assert backend == "c" and torch_missing == "True"

    model = write_model(tmp_path / "tiny.onnx")
    clip = write_clip(tmp_path / "clip.mp4")
    stats = tmp_path / "stats.json"
    result = run([python, script, "--model", model, "--source", clip, "--out", tmp_path / "overlay.mp4",
                  "--json", stats, "--no-progress"], env=env, cwd=tmp_path, timeout=300)
    summary = json.loads(stats.read_text())
    assert summary["frames_out"] == FRAMES and summary["engine"]["backend"] == "onnxruntime"
    assert "threads: inference" in result.stdout
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
