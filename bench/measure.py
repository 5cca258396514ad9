"""Latency benchmarks of the runtime at three levels, implementations side by side in one run.

    python -m runtime.benchmark --model models/export/gen_student.onnx \
        --model models/export/gen_student_int8.onnx --video data/prepared/synthetic/video/dashcam.mp4 \
        --json metrics/benchmark.json --csv-dir plots/benchmark --markdown docs/benchmark_latest.md

Levels: `model` (engine.infer alone, batch 1, at the artefact's input size), `ops` (each
pre/post op per implementation on 720p/1080p frames, with achieved memory bandwidth next to
a memcpy of the same byte count) and `e2e` (run_pipeline over a video, offline and real-time).
Within a level the candidates are timed round robin, one call each per iteration, so a noisy
machine slows them alike and their ratios hold. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from runtime import ops
from runtime.contract import ContractError
from runtime.engines import BACKEND_BY_SUFFIX, EngineError, input_spec, open_engine
from runtime.ops import opencv_chain, reference
from runtime.pipeline import GLASS_TO_GLASS, STAGES, Processor, percentiles, run_pipeline
from runtime.video import NullSink, SinkError, SourceError, VideoSink, open_source

EXIT_BAD_INPUT = 2
LEVELS = ("model", "ops", "e2e")
DEFAULT_MODELS = Path("models/export")
DEFAULT_VIDEO = Path("data/prepared/synthetic/video/dashcam.mp4")
NAMED_RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440),
                     "2160p": (3840, 2160)}
OPS = ("preprocess", "upsample_argmax", "argmax", "blend")
BASELINES = ("opencv", "numpy")  # what the fast implementations are compared against
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Encoded into compare verdicts: which way is better for a metric.
HIGHER_IS_BETTER = ("fps", "gbps", "ratio_to_model")


class BenchmarkError(ValueError):
    """The benchmark cannot run as asked; the message names the problem and the fix."""


# ------------------------------------------------------------------------------ statistics


def summarize(samples_ms) -> dict:
    """p50/p90/p99 (numpy linear interpolation), mean and the FPS the mean allows."""
    stats = {f"{key}_ms": value for key, value in percentiles(samples_ms).items()}
    mean = float(np.mean(samples_ms)) if len(samples_ms) else None
    stats.update(mean_ms=mean, fps=1000.0 / mean if mean else None, iters=len(samples_ms))
    return stats


def time_round_robin(candidates: dict[str, Callable[[], object]], warmup: int, iters: int) -> dict[str, list[float]]:
    """Milliseconds per call of every candidate, one call each per iteration.

    The starting candidate rotates with the iteration, so none always runs right after
    another's cache-thrashing call.
    """
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for iteration in range(warmup + iters):
        shift = iteration % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter_ns()
            candidates[name]()
            elapsed = time.perf_counter_ns() - start
            if iteration >= warmup:
                samples[name].append(elapsed / 1e6)
    return samples


# ---------------------------------------------------------------------------- ops level


def op_bytes(op: str, frame_wh: tuple[int, int], input_hw: tuple[int, int], classes: int) -> int:
    """Bytes the op must read plus write at least once (its compulsory memory traffic).

    preprocess: uint8 BGR frame in, float32 (3, h, w) out. upsample_argmax: float32 stride-4
    logits (K, h/4, w/4) in, uint8 labels at frame size out. argmax: float32 (K, h, w) in,
    uint8 (h, w) out. blend: frame and frame-size labels in, BGR frame out. The palette is
    a few bytes and left out.
    """
    width, height = frame_wh
    in_h, in_w = input_hw
    if op == "preprocess":
        return height * width * 3 + 3 * in_h * in_w * 4
    if op == "upsample_argmax":
        return classes * (in_h // 4) * (in_w // 4) * 4 + height * width
    if op == "argmax":
        return classes * in_h * in_w * 4 + in_h * in_w
    if op == "blend":
        return height * width * 3 * 2 + height * width
    raise ValueError(f"unknown op {op!r}")


def gbps(nbytes: int, ms: float | None) -> float | None:
    """Achieved bandwidth in GB/s (1e9 bytes) of moving `nbytes` in `ms` milliseconds."""
    return nbytes / (ms * 1e6) if ms else None


def _implementations() -> dict[str, object]:
    """Modules (or objects) with the four ops under the same signatures, by name."""
    impls = {}
    if ops.BACKEND == "c":
        impls["c"] = ops
    impls["opencv"] = opencv_chain
    impls["numpy"] = reference
    cuda = _cuda_ops()
    if cuda is not None:
        impls["cuda"] = cuda
    return impls


class _SynchronisedCuda:
    """CudaOps on device-resident inputs, each call waited for so the host clock times the kernels."""

    def __init__(self, cuda_ops, driver, gpuarray):
        self._ops, self._driver, self._gpuarray = cuda_ops, driver, gpuarray

    def bind(self, op: str, *args) -> Callable[[], object]:
        # The frame / logits (and blend's labels) live on the device; the palette is host data.
        uploaded = 2 if op == "blend" else 1
        args = [self._gpuarray.to_gpu(a) for a in args[:uploaded]] + list(args[uploaded:])
        function, synchronise = getattr(self._ops, op), self._driver.Context.synchronize

        def call():
            function(*args)
            synchronise()
        return call


def _cuda_ops():
    """The CUDA kernels when pycuda and a GPU are both here, else None."""
    try:
        import pycuda.autoinit  # noqa: F401 - creates the context CudaOps needs
        import pycuda.driver as driver
        import pycuda.gpuarray as gpuarray

        from runtime.cuda.ops import CudaOps
        return _SynchronisedCuda(CudaOps(), driver, gpuarray)
    except Exception:  # noqa: BLE001 - no pycuda, no driver or no device all mean "no CUDA row"
        return None


# The fused ops that write into a caller's buffer; the pipeline reuses one per stream.
WRITES_INTO_OUT = ("preprocess", "blend")


def _bind(impl, op: str, *args) -> Callable[[], object]:
    """A call of the op as the pipeline makes it: the C ops into a reused output buffer (a fresh
    multi-megabyte array costs page faults on every call), the naive chains as they must."""
    if isinstance(impl, _SynchronisedCuda):
        return impl.bind(op, *args)
    function = getattr(impl, op)
    if impl is ops and op in WRITES_INTO_OUT:
        out = function(*args)
        return lambda: function(*args, out=out)
    return lambda: function(*args)


def op_cases(resolutions: list[tuple[str, tuple[int, int]]], input_hw, classes: int):
    """(op, resolution label, frame (W, H), argument tuple) for every op and size.

    argmax works on full-resolution logits at the network's input size, whatever the frame,
    so it is measured once under that size.
    """
    rng = np.random.default_rng(0)
    in_h, in_w = input_hw
    palette = rng.integers(0, 256, (classes, 3), dtype=np.uint8)
    lowres = rng.standard_normal((classes, max(in_h // 4, 1), max(in_w // 4, 1)), dtype=np.float32)
    for label, (width, height) in resolutions:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, classes, (height, width), dtype=np.uint8)
        yield "preprocess", label, (width, height), (frame, input_hw, IMAGENET_MEAN, IMAGENET_STD)
        yield "upsample_argmax", label, (width, height), (lowres, (height, width))
        yield "blend", label, (width, height), (frame, labels, palette, 0.5)
    logits = rng.standard_normal((classes, in_h, in_w), dtype=np.float32)
    yield "argmax", f"{in_w}x{in_h}", (in_w, in_h), (logits,)


def bench_ops(resolutions, input_hw, classes: int, warmup: int, iters: int):
    """{op: {impl | "memcpy" | "speedup": {res: record}}} and the raw samples per series."""
    impls = _implementations()
    results: dict = {}
    series: dict[str, list[float]] = {}
    for op, label, frame_wh, args in op_cases(resolutions, input_hw, classes):
        nbytes = op_bytes(op, frame_wh, input_hw, classes)
        half = nbytes // 2
        copy_src, copy_dst = np.ones(half, np.uint8), np.empty(half, np.uint8)
        candidates = {name: _bind(impl, op, *args) for name, impl in impls.items()}
        candidates["memcpy"] = lambda: np.copyto(copy_dst, copy_src)
        samples = time_round_robin(candidates, warmup, iters)
        per_op = results.setdefault(op, {})
        for name, values in samples.items():
            record = summarize(values)
            moved = 2 * half if name == "memcpy" else nbytes
            record.update(bytes=moved, gbps=gbps(moved, record["p50_ms"]))
            per_op.setdefault(name, {})[label] = record
            series[f"{op}/{name}/{label}"] = values
        memcpy_gbps = per_op["memcpy"][label]["gbps"]
        speedups = {}
        for name in impls:
            record = per_op[name][label]
            record["fraction_of_memcpy"] = record["gbps"] / memcpy_gbps if memcpy_gbps else None
            if name not in BASELINES:
                for baseline in BASELINES:
                    speedups[f"{name}_vs_{baseline}"] = per_op[baseline][label]["p50_ms"] / record["p50_ms"]
        if speedups:
            per_op.setdefault("speedup", {})[label] = speedups
    return results, series


# -------------------------------------------------------------------------- model level


def model_names(paths: list[Path]) -> list[str]:
    """Metric-safe names (file stems, dots replaced), numbered where two stems collide."""
    names = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}_{count}"
        names.append(name)
    return names


def intra_op_threads(engine) -> int | None:
    """ONNX Runtime's intra-op thread setting (0 = its default, one per physical core)."""
    session = getattr(engine, "session", None)
    if session is None or not hasattr(session, "get_session_options"):
        return None
    return int(session.get_session_options().intra_op_num_threads)


def bench_models(engines: dict[str, object], warmup: int, iters: int):
    rng = np.random.default_rng(0)
    candidates = {}
    for name, engine in engines.items():
        dtype, shape = input_spec(engine.contract)
        if dtype == np.uint8:
            batch = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
        else:
            batch = rng.standard_normal((1, *shape), dtype=np.float32)
        candidates[name] = (lambda e, b: lambda: e.infer(b))(engine, batch)
    samples = time_round_robin(candidates, warmup, iters)
    results = {}
    for name, engine in engines.items():
        record = summarize(samples[name])
        record["intra_op_threads"] = intra_op_threads(engine)
        results[name] = record
    return results, samples


# ---------------------------------------------------------------------------- e2e level


def bench_e2e(engine, video: str, frames: int, encode: bool):
    """run_pipeline over the video per mode: {mode: record} and samples per mode/stage."""
    processor = Processor(engine)
    modes = ["offline", "realtime"] + (["offline_video"] if encode else [])
    results, series = {}, {}
    for mode in modes:
        with open_source(video) as source, tempfile.TemporaryDirectory(prefix="stpg-bench-") as scratch:
            realtime = mode == "realtime"
            sinks = [VideoSink(Path(scratch) / "overlay.mp4", source.fps, source.size)] if mode == "offline_video" \
                else [NullSink()]
            stats = run_pipeline(source, processor, sinks, realtime=realtime,
                                 pace_fps=source.fps if realtime else None, max_frames=frames)
        record = {"fps": stats.fps, "frames": stats.frames_out, "dropped": stats.dropped, "wall_s": stats.wall_s}
        if mode == "offline_video":
            record["codec"] = sinks[0].codec  # H.264 where PyAV has an encoder, else MPEG-4 part 2
        for stage in (*STAGES, GLASS_TO_GLASS):
            values = stats.latency_ms[stage]
            record[stage] = {key: value for key, value in summarize(values).items() if key != "fps"}
            series[f"{mode}/{stage}"] = values
        results[mode] = record
    return results, series


# ------------------------------------------------------------------------------- machine


def describe_machine() -> dict:
    """What the numbers were measured on, stored beside them."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "none"
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            gpu = "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or "none"
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("cv2", "onnxruntime"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu, "platform": platform.platform(), "versions": versions,
    }


# ------------------------------------------------------------------------------- compare


def flatten(data, prefix: str = "") -> dict[str, float]:
    """Numeric leaves as dotted keys, as `dvc metrics show` lists them."""
    flat = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        flat[prefix[:-1]] = float(data)
    return flat


def verdict(key: str, ratio: float | None) -> str:
    """'faster' / 'slower' / 'same' for timing metrics, '' where bigger is neither."""
    last = key.rsplit(".", 1)[-1]
    if ratio is None:
        return ""
    if last.endswith("_ms"):
        better = ratio < 1
    elif last in HIGHER_IS_BETTER or ".speedup." in key:
        better = ratio > 1
    else:
        return ""
    return "same" if ratio == 1 else ("faster" if better else "slower")


def compare(old: dict, new: dict) -> list[tuple[str, float, float, float | None, str]]:
    """(key, old, new, new/old, verdict) for every numeric metric both runs have."""
    old_flat, new_flat = flatten(old), flatten(new)
    rows = []
    for key in sorted(old_flat.keys() & new_flat.keys()):
        before, after = old_flat[key], new_flat[key]
        ratio = after / before if before else None
        rows.append((key, before, after, ratio, verdict(key, ratio)))
    return rows


def format_compare(rows) -> str:
    lines = [f"{'metric':<56}{'old':>12}{'new':>12}{'new/old':>9}"]
    for key, before, after, ratio, word in rows:
        shown = f"{ratio:8.3f}x" if ratio is not None else f"{'-':>9}"
        lines.append(f"{key:<56}{before:12.4g}{after:12.4g}{shown} {word}".rstrip())
    return "\n".join(lines)


def load_results(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkError(f"--compare {path}: no such file; give an earlier --json output") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"--compare {path}: not a readable JSON file ({exc}); "
                             "give an earlier --json output") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"--compare {path}: holds no benchmark results (not a JSON object)")
    return data


# ------------------------------------------------------------------------------- outputs


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(results: dict) -> str:
    """The tables docs/benchmarks.md shows, from one run's results."""
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = machine["load_average"]
    lines = [
        "# Benchmark results", "",
        f"- date: {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"load average {' / '.join(map(str, load)) if load else 'unknown'} at the end",
        f"- GPU: {machine['gpu']}",
        f"- {versions}",
        f"- ops backend {results['threads']['ops_backend']}, {results['threads']['ops']} op threads; "
        f"warm-up {results['config']['warmup']}, {results['config']['iters']} timed iterations", "",
    ]
    if "model" in results:
        lines += ["## Model only (batch 1)", "",
                  "| model | provider | precision | input | intra-op threads | p50 ms | p90 ms | p99 ms | mean ms | FPS |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, record in results["model"].items():
            info = results["engines"][name]
            threads = record["intra_op_threads"]
            lines.append(f"| {name} | {info.get('provider', info['backend'])} | {info.get('precision', '-')} "
                         f"| {info['input']} | {'default' if threads == 0 else threads} | {_ms(record['p50_ms'])} "
                         f"| {_ms(record['p90_ms'])} | {_ms(record['p99_ms'])} | {_ms(record['mean_ms'])} "
                         f"| {_ms(record['fps'])} |")
        lines.append("")
    if "ops" in results:
        in_h, in_w = results["config"]["input_size"]
        lines += [f"## Ops (network input {in_h}x{in_w}, {results['config']['classes']} classes)", "",
                  "Speed-ups are p50 ratios; bandwidth is bytes read + written / p50, next to a memcpy "
                  "moving the same bytes. The C preprocess and blend write into a reused buffer, as the "
                  "pipeline calls them; the OpenCV and NumPy chains allocate their results.", "",
                  "| op | frame | impl | p50 ms | p90 ms | p99 ms | GB/s | % of memcpy | vs OpenCV | vs NumPy |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for op, per_impl in results["ops"].items():
            labels = list(per_impl["memcpy"])
            for label in labels:
                opencv_p50 = per_impl["opencv"][label]["p50_ms"]
                numpy_p50 = per_impl["numpy"][label]["p50_ms"]
                for impl, per_res in per_impl.items():
                    if impl == "speedup":
                        continue
                    record = per_res[label]
                    fraction = record.get("fraction_of_memcpy")
                    vs = ("-", "-") if impl == "memcpy" else (_ratio(opencv_p50 / record["p50_ms"]),
                                                             _ratio(numpy_p50 / record["p50_ms"]))
                    lines.append(f"| {op} | {label} | {impl} | {_ms(record['p50_ms'])} | {_ms(record['p90_ms'])} "
                                 f"| {_ms(record['p99_ms'])} | {_ms(record['gbps'])} "
                                 f"| {'-' if fraction is None else f'{100 * fraction:.0f}%'} | {vs[0]} | {vs[1]} |")
        lines.append("")
    if "e2e" in results:
        e2e = results["e2e"]
        lines += [f"## End to end ({results['config']['e2e_model']}, {results['config']['video']})", ""]
        for mode in (m for m in e2e if isinstance(e2e[m], dict)):
            record = e2e[mode]
            codec = f" into {record['codec']}" if "codec" in record else ""
            lines.append(f"- {mode}{codec}: {record['fps']:.2f} FPS, {record['frames']} frames, "
                         f"{record['dropped']} dropped")
        if "ratio_to_model" in e2e:
            lines.append(f"- offline FPS / model-only FPS: {e2e['ratio_to_model']:.2f}")
        lines += ["", "| mode | stage | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
        for mode in (m for m in e2e if isinstance(e2e[m], dict)):
            for stage in (*STAGES, GLASS_TO_GLASS):
                row = e2e[mode][stage]
                lines.append(f"| {mode} | {stage} | {_ms(row['p50_ms'])} | {_ms(row['p90_ms'])} | {_ms(row['p99_ms'])} |")
        lines.append("")
    return "\n".join(lines)


def csv_text(series: dict[str, list[float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["series", "iteration", "ms"])
    for name, values in series.items():
        for iteration, value in enumerate(values):
            writer.writerow([name, iteration, f"{value:.6f}"])
    return buffer.getvalue()


def check_output(path: Path, what: str) -> None:
    """Fail before measuring if `path` could not be written afterwards."""
    if path.is_dir():
        raise BenchmarkError(f"{what} {path}: is a folder; give a file name")
    folder = path.parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise BenchmarkError(f"{what} {path}: {blocker} is a file, not a folder; choose another location")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise BenchmarkError(f"{what} {path}: cannot write in {folder} ({exc.strerror}); "
                             "choose a writable location") from None


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temp)` to a hidden name beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda temp: temp.write_text(text))


def write_plot(path: Path, series_by_level: dict[str, dict[str, list[float]]]) -> bool:
    """Box plots of the latency samples per level; False (nothing written) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = [(level, series) for level, series in series_by_level.items() if series]
    if not levels:
        return False
    widest = max(len(series) for _, series in levels)
    figure, axes = plt.subplots(len(levels), 1, figsize=(max(6.0, 0.3 * widest + 2), 4.5 * len(levels)),
                                squeeze=False)
    for axis, (level, series) in zip(axes[:, 0], levels):
        names = list(series)
        axis.boxplot([series[n] for n in names], showfliers=False)
        axis.set_xticks(range(1, len(names) + 1), names, fontsize=7, rotation=90)
        axis.set_yscale("log")
        axis.set_ylabel("ms (log scale)")
        axis.set_title(level)
    figure.tight_layout()
    write_atomic(path, lambda temp: figure.savefig(temp, format="png", dpi=100))
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------------- CLI


def parse_resolution(text: str) -> tuple[str, tuple[int, int]]:
    if text in NAMED_RESOLUTIONS:
        return text, NAMED_RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise BenchmarkError(f"--resolutions: {text!r} is neither {', '.join(NAMED_RESOLUTIONS)} "
                             "nor WIDTHxHEIGHT such as 1280x720")
    return text, (int(match[1]), int(match[2]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", metavar="PATH",
                        help=f"artefact to time (repeatable; default: every {DEFAULT_MODELS}/*.onnx)")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file or image folder for the e2e level")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS))
    parser.add_argument("--warmup", type=int, default=5, metavar="N")
    parser.add_argument("--iters", type=int, default=30, metavar="N")
    parser.add_argument("--frames", type=int, default=120, metavar="N", help="frames per e2e mode")
    parser.add_argument("--threads", type=int, metavar="N", help="threads for the C ops and ONNX Runtime")
    parser.add_argument("--resolutions", nargs="+", default=["720p", "1080p"],
                        help="frame sizes of the ops level: 480p .. 2160p or WIDTHxHEIGHT")
    parser.add_argument("--input-size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"),
                        help="network input of the ops level")
    parser.add_argument("--classes", type=int, default=19, help="logit channels of the ops level")
    parser.add_argument("--encode", action="store_true",
                        help="also run e2e offline into an overlay video sink (H.264 via PyAV)")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--csv-dir", type=Path, metavar="DIR")
    parser.add_argument("--plot", type=Path, metavar="FILE.png")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the tables here (else print them)")
    parser.add_argument("--compare", type=Path, metavar="OLD.json", help="print new/old of every shared metric")
    args = parser.parse_args(argv)
    for name, minimum in (("warmup", 0), ("iters", 1), ("frames", 1), ("threads", 1), ("classes", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {value}")
    if min(args.input_size) < 4:
        parser.error(f"--input-size must be at least 4 4 (stride-4 logits), got {args.input_size}")
    if args.classes > reference.MAX_CLASSES:
        parser.error(f"--classes must be <= {reference.MAX_CLASSES} (uint8 labels), got {args.classes}")
    return args


def resolve_models(args) -> list[Path]:
    needed = {"model", "e2e"} & set(args.levels)
    if not needed:
        return []
    models = args.model or sorted(DEFAULT_MODELS.glob("*.onnx"))
    if not models:
        raise BenchmarkError(f"no model to time: {DEFAULT_MODELS} holds no .onnx; run `dvc repro export` "
                             "or pass --model PATH")
    for path in models:
        if not path.is_file():
            raise BenchmarkError(f"model {path}: no such file; run `dvc repro export` or fix --model")
        if path.suffix not in BACKEND_BY_SUFFIX:
            raise BenchmarkError(f"model {path}: unknown artefact type; use one of {', '.join(BACKEND_BY_SUFFIX)}")
    return models


def benchmark(args) -> dict:
    """Run the chosen levels and write the outputs; user errors raise BenchmarkError & co."""
    models = resolve_models(args)
    if "e2e" in args.levels and not Path(args.video).exists():
        raise BenchmarkError(f"video {args.video}: no such file or folder; run `dvc repro prepare` or fix --video")
    resolutions = [parse_resolution(text) for text in args.resolutions]
    old = load_results(args.compare) if args.compare else None
    for path, what in ((args.json, "--json"), (args.markdown, "--markdown"), (args.plot, "--plot")):
        if path is not None:
            check_output(path, what)
    if args.csv_dir is not None:
        check_output(args.csv_dir / "model.csv", "--csv-dir")
    if args.threads:
        ops.set_num_threads(args.threads)

    results: dict = {}
    series: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        engines = {}
        for name, path in zip(model_names(models), models):
            backend = BACKEND_BY_SUFFIX[path.suffix]
            extra = {"threads": args.threads} if args.threads and backend in ("onnxruntime", "torch") else {}
            engines[name] = stack.enter_context(open_engine(path, **extra))
        if "model" in args.levels:
            results["model"], series["model"] = bench_models(engines, args.warmup, args.iters)
        if "ops" in args.levels:
            results["ops"], series["ops"] = bench_ops(resolutions, tuple(args.input_size), args.classes,
                                                      args.warmup, args.iters)
        if "e2e" in args.levels:
            first = next(iter(engines))
            results["e2e"], series["e2e"] = bench_e2e(engines[first], args.video, args.frames, args.encode)
            if "model" in results and results["model"][first]["fps"]:
                results["e2e"]["ratio_to_model"] = results["e2e"]["offline"]["fps"] / results["model"][first]["fps"]
        results["engines"] = {name: {**engine.describe(), "artefact": str(path),
                                     "input": "x".join(map(str, input_spec(engine.contract)[1]))}
                              for (name, engine), path in zip(engines.items(), models)}
    results["threads"] = {"ops": ops.get_num_threads(), "ops_backend": ops.BACKEND}
    results["config"] = {"levels": list(args.levels), "warmup": args.warmup, "iters": args.iters,
                         "frames": args.frames, "input_size": list(args.input_size), "classes": args.classes,
                         "resolutions": [label for label, _ in resolutions], "video": str(args.video),
                         "e2e_model": next(iter(results["engines"]), None)}
    results["machine"] = describe_machine()

    markdown = render_markdown(results)
    if args.json is not None:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.csv_dir is not None:
        for level, samples in series.items():
            write_text(args.csv_dir / f"{level}.csv", csv_text(samples))
    if args.plot is not None and not write_plot(args.plot, series):
        print(f"benchmark: note: matplotlib is not installed; {args.plot} not written", file=sys.stderr)
    if args.markdown is not None:
        write_text(args.markdown, markdown)
    else:
        print(markdown)
    if old is not None:
        print(format_compare(compare(old, results)))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        benchmark(args)
    except (BenchmarkError, EngineError, ContractError, SourceError, SinkError) as exc:
        print(f"benchmark: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
