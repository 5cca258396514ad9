"""Device check for a machine with an NVIDIA GPU, run from the repository root with no network:

    tools/gpu_check.sh [--out gpu_check.json]

It runs the `gpu`-marked tests and, for comparison, the same kernels compiled for the CPU
(tests/runtime/test_kernels_host.py, which CI runs too), compares every CUDA kernel with the
NumPy reference on random inputs, times the pre/post ops and the GPU frame path at 1080p against the CPU C ops, and times
the STPG training step at the Cityscapes recipe (ResNet-50 v1c, 800x800, batch 3) in fp32 and
bf16, then writes one JSON. Each step runs in a child process under its own time limit (all of
them within 8 minutes), so a step that hangs or takes the driver down is recorded and the rest
still run. What the installed packages cannot run (the kernels without CuPy or pycuda, training
without torch, engines without TensorRT or onnxruntime-gpu) is recorded as skipped, with why.

Exit codes: 0 every check that ran passed; 1 a check failed, crashed or ran out of time;
2 no GPU here or bad arguments (one line on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from runtime import files
from runtime.cuda.device import LIBRARIES, CudaUnavailableError, open_device
from runtime.video import Sink

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
ROOT = Path(__file__).resolve().parents[1]
FRAME_WH = (1920, 1080)
MODEL_INPUT_HW = (512, 1024)
CLASSES = 19
FRAMES = 120
DEFAULT_MODEL = ROOT / "models" / "export" / "gen_student.onnx"
# Seconds per step; together 450, inside the 8 minutes with start-up and the probe.
STEP_LIMITS_S = {"tests": 105, "host_kernels": 20, "kernels": 25, "ops": 60, "frame_path": 130, "training": 110}
HOST_KERNEL_TESTS = "tests/runtime/test_kernels_host.py"
TRAINING_COMMAND = ["-m", "training.bench_step", "--methods", "stpg", "--precisions", "fp32", "bf16",
                    "--backbone", "resnet50_v1c", "--crop", "800", "--batch", "3", "--iters", "4", "--warmup", "2",
                    "--device", "cuda"]


class NoGpu(RuntimeError):
    """No library here can reach a CUDA GPU; the message lists why for each."""


class BadOutput(ValueError):
    """The results file cannot be written where asked."""


# ------------------------------------------------------------------------------ probe


def probe_gpu() -> dict:
    """{library: what it sees} for every library that reaches GPU 0, or NoGpu."""
    found, reasons = {}, []
    for library in LIBRARIES:
        try:
            device = open_device(0, library)
        except CudaUnavailableError as exc:
            reasons.append(str(exc).split(";")[0].removeprefix("no CUDA library: "))
            continue
        found[library] = device.describe()
        device.close()
    try:
        import torch
    except ImportError:
        reasons.append("torch is not installed")
    else:
        if torch.cuda.is_available():
            found["torch"] = {"library": "torch", "gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
        else:
            reasons.append(f"torch {torch.__version__} sees no CUDA device")
    if not found:
        raise NoGpu("; ".join(reasons))
    return found


# ------------------------------------------------------------------------------ kernels


def _close(got: np.ndarray, want: np.ndarray) -> dict:
    """Float outputs: pass within the tolerance of tests/runtime/test_cuda_ops.py, say how far off."""
    difference = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    return {"pass": bool(np.allclose(got, want, rtol=1e-6, atol=1e-5)), "max_abs_diff": difference,
            "identical": bool(np.array_equal(got, want))}


def _equal(got: np.ndarray, want: np.ndarray) -> dict:
    mismatches = int(np.count_nonzero(got != want))
    return {"pass": mismatches == 0, "mismatches": mismatches}


def _labels_at_ties(got: np.ndarray, values: np.ndarray) -> dict:
    """Upsampled labels may differ from the reference only where the top two classes tie to 1e-5."""
    mismatch = got != np.argmax(values, axis=0)
    top_two = np.sort(values, axis=0)[-2:]
    not_tied = int(np.count_nonzero((top_two[1] - top_two[0])[mismatch] >= 1e-5))
    return {"pass": not_tied == 0, "mismatches": int(np.count_nonzero(mismatch)), "mismatches_not_at_ties": not_tied}


def compare_kernels(ops) -> dict:
    """Every kernel against runtime.ops.reference on random 1080p-sized inputs."""
    from runtime.ops import reference

    rng = np.random.default_rng(0)
    width, height = FRAME_WH
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    results = {
        "preprocess_nchw_f32": _close(ops.preprocess(frame, MODEL_INPUT_HW, mean, std).get(),
                                      reference.preprocess(frame, MODEL_INPUT_HW, mean, std)),
        "preprocess_nchw_f16": _equal(ops.preprocess(frame, MODEL_INPUT_HW, mean, std, dtype=np.float16).get(),
                                      reference.preprocess(frame, MODEL_INPUT_HW, mean, std, dtype=np.float16)),
        "preprocess_nhwc_u8": _equal(ops.preprocess(frame, MODEL_INPUT_HW, mean, std, layout="nhwc_uint8").get(),
                                     reference.preprocess(frame, MODEL_INPUT_HW, mean, std, layout="nhwc_uint8")),
    }
    lowres_hw = (MODEL_INPUT_HW[0] // 4, MODEL_INPUT_HW[1] // 4)
    for dtype, suffix in ((np.float32, "f32"), (np.float16, "f16")):
        lowres = rng.standard_normal((CLASSES, *lowres_hw)).astype(dtype)
        results[f"upsample_argmax_{suffix}"] = _labels_at_ties(
            ops.upsample_argmax(lowres, (height, width)).get(), reference.upsample_logits(lowres, (height, width)))
        logits = rng.standard_normal((CLASSES, *MODEL_INPUT_HW)).astype(dtype)
        logits[:, ::3] = np.round(logits[:, ::3])  # exact ties: the lowest class must win
        results[f"argmax_{suffix}"] = _equal(ops.argmax(logits).get(), reference.argmax(logits))
    palette = rng.integers(0, 256, (CLASSES, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES + 3, MODEL_INPUT_HW, dtype=np.uint8)  # some beyond the palette
    for alpha in (0.5, 0.3):
        results[f"blend_alpha_{alpha}"] = _equal(ops.blend(frame, labels, palette, alpha).get(),
                                                 reference.blend(frame, labels, palette, alpha))
    return results


def check_kernels() -> dict:
    from runtime.cuda.ops import CudaOps

    by_library = {}
    for library in LIBRARIES:
        try:
            device = open_device(0, library)
        except CudaUnavailableError as exc:
            by_library[library] = {"skipped": str(exc)}
            continue
        try:
            by_library[library] = compare_kernels(CudaOps(device))
        finally:
            device.close()
    ran = [result for result in by_library.values() if "skipped" not in result]
    if not ran:
        return {"skipped": "neither pycuda nor CuPy can run the kernels (pip install -e '.[gpu]')", **by_library}
    passed = all(case["pass"] for result in ran for case in result.values())
    return {"pass": passed, **by_library}


# ------------------------------------------------------------------------------ ops at 1080p


def time_ops() -> dict:
    """bench's ops level at 1080p: the C ops, the CUDA kernels on device data, the naive chains."""
    from bench.measure import bench_ops

    results, _ = bench_ops([("1080p", FRAME_WH)], MODEL_INPUT_HW, CLASSES, warmup=1, iters=8)
    # argmax works at the network's input size, so its column is named by that size, not 1080p.
    table = {op: {impl: {size: record["p50_ms"] for size, record in records.items()}
                  for impl, records in per_op.items() if impl != "speedup"}
             for op, per_op in results.items()}
    note = None if all("cuda" in row for row in table.values()) else "no CUDA row: neither pycuda nor CuPy runs here"
    return {"p50_ms": table, "note": note}


# ------------------------------------------------------------------------------ frame path


class _KeepOverlay(Sink):
    """A sink that asks for the overlay (so it is rendered and downloaded) and drops it."""

    needs_overlay = True


def frame_path_model(scratch: Path) -> tuple[Path, str]:
    """The project's exported model, or a randomly initialised ResNet-18 DeepLabV3+ exported here."""
    if DEFAULT_MODEL.exists():
        return DEFAULT_MODEL, str(DEFAULT_MODEL.relative_to(ROOT))
    from export.onnx_export import export_onnx, make_contract
    from training.models import build_model

    info = {"classes": [f"class{i}" for i in range(CLASSES)],
            "palette": [[(37 * i) % 256, (91 * i) % 256, (53 * i) % 256] for i in range(CLASSES)],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "dataset": "random", "sha256": "0" * 64}
    contract = make_contract(info, input_size=MODEL_INPUT_HW, input_layout="nchw_float", output_kind="lowres_logits")
    path = export_onnx(build_model("resnet18", CLASSES).eval(), contract, scratch / "random_resnet18.onnx")
    return path, "random ResNet-18 DeepLabV3+ (no models/export/gen_student.onnx here)"


def gpu_engines(model: Path, scratch: Path) -> dict:
    """{name: opener or skip reason} for the engines that run on the GPU here."""
    import onnxruntime

    from runtime.engines import open_engine

    engines = {}
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        engines["onnxruntime_cuda"] = lambda: open_engine(model, providers="cuda")
    else:
        engines["onnxruntime_cuda"] = "onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    try:
        import tensorrt  # noqa: F401 - only asking whether it is here
    except ImportError:
        engines["tensorrt_fp32"] = "TensorRT is not installed"
    else:
        def build_and_open():
            from export.tensorrt import build_engine

            engine_path = scratch / "frame_path_fp32.engine"
            build_engine(model, engine_path, precision="fp32", workspace_mb=2048)
            return open_engine(engine_path)
        engines["tensorrt_fp32"] = build_and_open
    return engines


def run_frames(processor, frames: list[np.ndarray]) -> dict:
    from runtime.pipeline import GLASS_TO_GLASS, STAGES, percentiles, run_pipeline

    source = ((index, frames[index % len(frames)]) for index in itertools.count())
    stats = run_pipeline(source, processor, [_KeepOverlay()], max_frames=FRAMES)
    stages = (*STAGES, GLASS_TO_GLASS)
    return {"fps": stats.fps, "frames": stats.frames_out,
            "p50_ms": {stage: percentiles(stats.latency_ms[stage], (50,))["p50"] for stage in stages}}


def frame_labels(processor, frame: np.ndarray) -> np.ndarray:
    """One frame through the stages one at a time, as host labels at frame size."""
    image = processor.upload(frame)
    output = processor.infer(processor.preprocess(image))
    labels, _ = processor.postprocess(output, frame.shape[:2])
    return processor.frame_labels(labels, frame.shape[:2])


def time_frame_path() -> dict:
    """The GPU frame path against the C ops path, each with the same GPU engine, at 1080p."""
    from runtime import ops
    from runtime.gpu_path import open_processor

    try:
        open_device().close()
    except CudaUnavailableError as exc:
        return {"skipped": f"the GPU frame path needs pycuda or CuPy: {exc}"}
    rng = np.random.default_rng(1)
    width, height = FRAME_WH
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        model, model_note = frame_path_model(Path(scratch))
        report = {"model": model_note, "frames": FRAMES, "frame": f"{width}x{height}", "cpu_ops": ops.BACKEND,
                  "engines": {}}
        for name, opener in gpu_engines(model, Path(scratch)).items():
            if isinstance(opener, str):
                report["engines"][name] = {"skipped": opener}
                continue
            started = time.perf_counter()
            with opener() as engine:
                record = {"open_s": time.perf_counter() - started, "engine": engine.describe()}
                processors = {device: open_processor(engine, device) for device in ("cpu", "cuda")}
                for device, processor in processors.items():
                    record[f"{device}_ops"] = run_frames(processor, frames)
                agree = [np.mean(frame_labels(processors["cpu"], f) == frame_labels(processors["cuda"], f))
                         for f in frames[:2]]
                record["label_agreement_cuda_vs_cpu_ops"] = float(np.mean(agree))
                processors["cuda"].close()
            report["engines"][name] = record
    ran = [r for r in report["engines"].values() if "skipped" not in r]
    if not ran:
        return {**report, "skipped": "no engine runs on the GPU here (install onnxruntime-gpu or TensorRT)"}
    # Same engine both ways: the labels can differ only where preprocess rounding tips a near-tie.
    report["pass"] = all(r["label_agreement_cuda_vs_cpu_ops"] >= 0.99 for r in ran)
    return report


# ------------------------------------------------------------------------------ subprocess steps


STEPS = {"kernels": check_kernels, "ops": time_ops, "frame_path": time_frame_path}


def run_step_here(name: str, result_path: Path) -> int:
    """Child side: run one step and write its result (or its error) as JSON."""
    try:
        result = STEPS[name]()
    except Exception as exc:  # noqa: BLE001 - any failure is the step's result
        result = {"pass": False, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    files.write_json(result_path, result)
    return 0


def run_child(command: list[str], limit_s: float) -> tuple[subprocess.CompletedProcess | None, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - started
    return done, time.perf_counter() - started


def run_step(name: str, scratch: Path) -> dict:
    """Parent side: the step in a child process under its limit."""
    result_path = scratch / f"{name}.json"
    done, seconds = run_child([sys.executable, "-m", "tools.gpu_check", "--step", name, "--result",
                               str(result_path)], STEP_LIMITS_S[name])
    if done is None:
        return {"pass": False, "error": f"ran out of its {STEP_LIMITS_S[name]} s", "seconds": seconds}
    if not result_path.exists():
        return {"pass": False, "error": f"crashed with exit code {done.returncode}",
                "stderr": done.stderr.splitlines()[-12:], "seconds": seconds}
    return {**json.loads(result_path.read_text()), "seconds": seconds}


def gpu_tests(scratch: Path) -> dict:
    """pytest -m gpu over the test files that have gpu-marked tests; counts and failures."""
    test_files = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                        if "mark.gpu" in path.read_text())
    return pytest_run(["-m", "gpu", *test_files], test_files, scratch / "gpu_tests.xml", "tests")


def host_kernel_tests(scratch: Path) -> dict:
    """The kernels compiled for the CPU against the reference, beside the GPU's own results: where
    the GPU fails and these pass, the difference is the device's, not the kernel code's."""
    return pytest_run([HOST_KERNEL_TESTS], [HOST_KERNEL_TESTS], scratch / "host_kernels.xml", "host_kernels")


def pytest_run(arguments: list[str], test_files: list[str], report_path: Path, step: str) -> dict:
    """pytest in a child under the step's limit; counts, failures and skip reasons from its JUnit report."""
    done, seconds = run_child([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report_path}", *arguments], STEP_LIMITS_S[step])
    if done is None or not report_path.exists():
        reason = f"ran out of its {STEP_LIMITS_S[step]} s" if done is None else f"pytest exited {done.returncode}"
        return {"pass": False, "error": reason, "files": test_files, "seconds": seconds}
    suite = ElementTree.parse(report_path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        for problem in (*case.findall("failure"), *case.findall("error")):
            failed.append(f"{case.get('classname')}::{case.get('name')}: {(problem.get('message') or '')[:300]}")
    skipped = sorted({(s.get("message") or "")[:200] for s in suite.iter("skipped")})
    return {"pass": counts["failures"] + counts["errors"] == 0, "files": test_files, **counts,
            "failed": failed, "skip_reasons": skipped, "seconds": seconds}


def training_step(gpus: dict) -> dict:
    """training.bench_step at the Cityscapes recipe: median seconds per STPG iteration."""
    command = "python " + " ".join(TRAINING_COMMAND)
    if "torch" not in gpus:
        return {"skipped": "torch with CUDA is not installed", "command": command}
    done, seconds = run_child([sys.executable, *TRAINING_COMMAND], STEP_LIMITS_S["training"])
    if done is None:
        return {"pass": False, "command": command, "error": f"ran out of its {STEP_LIMITS_S['training']} s"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return {"pass": False, "command": command, "error": tail[0], "seconds": seconds}
    rows = re.findall(r"^\s*(\w+)\s+(\w+): ([0-9.]+) s/it$", done.stdout, flags=re.MULTILINE)
    return {"pass": len(rows) == 2, "command": command, "header": done.stdout.splitlines()[0],
            "seconds_per_iteration": {f"{method}_{precision}": float(s) for method, precision, s in rows},
            "seconds": seconds}


# ------------------------------------------------------------------------------ main


def check(out: Path) -> int:
    from bench.measure import describe_machine

    gpus = probe_gpu()
    try:  # fail now rather than after eight minutes
        out.parent.mkdir(parents=True, exist_ok=True)
        files.create_temp(out.parent).unlink()
    except OSError as exc:
        raise BadOutput(f"--out {out}: cannot write there ({exc.strerror}); give a writable path") from None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit or None, "machine": describe_machine(), "gpu_libraries": gpus}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        report["gpu_tests"] = gpu_tests(Path(scratch))
        report["host_kernel_tests"] = host_kernel_tests(Path(scratch))
        for name in STEPS:
            report[name] = run_step(name, Path(scratch))
        report["training_step"] = training_step(gpus)
    report["total_s"] = time.perf_counter() - started
    failed = [name for name, part in report.items() if isinstance(part, dict) and part.get("pass") is False]
    report["failed"] = failed
    files.write_json(out, report)
    print(f"gpu_check: {'FAILED: ' + ', '.join(failed) if failed else 'passed'}; results in {out}")
    return EXIT_FAILED if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON of results")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)  # child processes only
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_step_here(args.step, args.result)
    if args.out.is_dir():
        print(f"gpu_check: error: --out {args.out} is a folder; give a file name such as gpu_check.json",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return check(args.out)
    except NoGpu as exc:
        print(f"gpu_check: error: no CUDA GPU usable here ({exc}); run it on a machine with an NVIDIA GPU, "
              "its driver and CuPy, pycuda or CUDA-enabled torch", file=sys.stderr)
    except BadOutput as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
