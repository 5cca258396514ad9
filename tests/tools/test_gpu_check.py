"""tools/gpu_check: its refusal without a GPU, and how it reads what its steps report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_it_stops_in_one_line_and_writes_nothing(tmp_path):
    try:
        gpu_check.probe_gpu()
    except gpu_check.NoGpu:
        pass
    else:
        pytest.skip("a CUDA GPU is usable here: the check would run in full")
    out = tmp_path / "results" / "gpu_check.json"
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--out", str(out)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: no CUDA GPU usable here (")
    assert "run it on a machine with an NVIDIA GPU" in lines[0]
    assert not (tmp_path / "results").exists()


def test_upsampled_labels_may_differ_only_at_near_ties():
    # Two classes over three pixels: pixel 0 ties exactly, pixel 1 is 5e-6 apart, pixel 2 is 0.5 apart.
    values = np.array([[[0.0, 1.0, 0.5]], [[0.0, 0.999995, 1.0]]])
    assert gpu_check._labels_at_ties(np.array([[1, 1, 1]]), values) == {
        "pass": True, "mismatches": 2, "mismatches_not_at_ties": 0}
    assert gpu_check._labels_at_ties(np.array([[1, 1, 0]]), values) == {
        "pass": False, "mismatches": 3, "mismatches_not_at_ties": 1}


def test_float_kernels_pass_within_the_test_tolerance():
    want = np.array([1.0, 2.0], np.float32)
    assert gpu_check._close(want + np.float32(5e-6), want)["pass"]  # atol 1e-5 + rtol 1e-6 * 2
    far = gpu_check._close(want + np.float32(1e-4), want)
    assert not far["pass"] and far["max_abs_diff"] == pytest.approx(1e-4, rel=1e-2)


def _completed(stdout="", stderr="", code=0):
    return subprocess.CompletedProcess([], code, stdout, stderr), 12.5


def test_training_step_reads_seconds_per_iteration(monkeypatch):
    printed = ("resnet50_v1c, 800x800, batch 3, cuda, 16 threads (median s/iteration)\n"
               "         stpg  fp32: 1.532 s/it\n         stpg  bf16: 0.871 s/it\n")
    monkeypatch.setattr(gpu_check, "run_child", lambda command, limit: _completed(printed))
    result = gpu_check.training_step({"torch": {}})
    assert result["pass"] and result["seconds_per_iteration"] == {"stpg_fp32": 1.532, "stpg_bf16": 0.871}
    assert "--crop 800 --batch 3" in result["command"] and "--backbone resnet50_v1c" in result["command"]
    assert gpu_check.training_step({"cupy": {}}) == {"skipped": "torch with CUDA is not installed",
                                                     "command": result["command"]}


def test_gpu_tests_are_counted_from_the_junit_report(monkeypatch, tmp_path):
    report = """<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">
      <testcase classname="tests.runtime.test_cuda_ops" name="test_a"/>
      <testcase classname="tests.runtime.test_cuda_ops" name="test_b"><failure message="assert 1 == 2"/></testcase>
      <testcase classname="tests.export.test_tensorrt" name="test_c"><skipped message="no tensorrt"/></testcase>
    </testsuite></testsuites>"""

    def pytest_run(command, limit):
        junit = next(arg for arg in command if arg.startswith("--junitxml="))
        Path(junit.split("=", 1)[1]).write_text(report)
        return _completed()

    monkeypatch.setattr(gpu_check, "run_child", pytest_run)
    result = gpu_check.gpu_tests(tmp_path)
    assert not result["pass"] and (result["tests"], result["failures"], result["skipped"]) == (3, 1, 1)
    assert result["failed"] == ["tests.runtime.test_cuda_ops::test_b: assert 1 == 2"]
    assert result["skip_reasons"] == ["no tensorrt"]
    assert "tests/runtime/test_cuda_ops.py" in result["files"]


def test_host_kernel_tests_run_the_host_compiled_kernel_file_under_their_limit(monkeypatch, tmp_path):
    report = """<testsuite tests="2" failures="0" errors="0" skipped="0">
      <testcase classname="tests.runtime.test_kernels_host" name="test_a"/>
      <testcase classname="tests.runtime.test_kernels_host" name="test_b"/></testsuite>"""
    calls = []

    def pytest_run(command, limit):
        calls.append((command, limit))
        junit = next(arg for arg in command if arg.startswith("--junitxml="))
        Path(junit.split("=", 1)[1]).write_text(report)
        return _completed()

    monkeypatch.setattr(gpu_check, "run_child", pytest_run)
    result = gpu_check.host_kernel_tests(tmp_path)
    assert result["pass"] and (result["tests"], result["failures"]) == (2, 0)
    [(command, limit)] = calls
    assert command[-1] == "tests/runtime/test_kernels_host.py" and "-m" not in command[3:]
    assert limit == gpu_check.STEP_LIMITS_S["host_kernels"] and sum(gpu_check.STEP_LIMITS_S.values()) == 450


def test_a_step_that_crashes_is_recorded_not_raised(monkeypatch, tmp_path):
    crashed = _completed(stderr="Segmentation fault", code=139)
    monkeypatch.setattr(gpu_check, "run_child", lambda command, limit: crashed)
    result = gpu_check.run_step("kernels", tmp_path)
    assert result["pass"] is False and result["error"] == "crashed with exit code 139"
    monkeypatch.setattr(gpu_check, "run_child", lambda command, limit: (None, 25.0))
    assert gpu_check.run_step("kernels", tmp_path)["error"] == "ran out of its 25 s"
