"""Timing the runtime: the model alone, each pre/post op, the video pipeline, a rig of cameras, a soak run.

Levels: `model` (engine.infer alone, batch 1, at the artefact's input size), `ops` (each
pre/post op per implementation on 720p/1080p frames, with achieved memory bandwidth next to
a memcpy of the same byte count, idle and "loaded": while an engine infers back to back in
another thread, as in the pipeline) and `e2e` (run_pipeline over a video per artefact,
offline and real-time, with its FPS over the artefact's model-only FPS). Threads follow the
pipeline's budget (runtime.pipeline.thread_budget). Within a level the candidates are timed
round robin, one call each per iteration, so a noisy machine slows them alike and their
ratios hold.

Levels `rig`, `soak` and `drive` (not run unless named in --levels): `rig` runs N = 1, 2, 4 copies of the
video through one segment.py rig process and through N separate segment.py processes started
together on the same cores (what a user does without the rig), comparing aggregate FPS, the worst
camera's p99 glass to glass and peak resident memory; `soak` loops the video through one camera
for a fixed number of frames and records resident memory, open file descriptors and p99 glass to
glass per window of frames, the signs of drift over hours; `drive` records the video's frames as a
2-topic MCAP drive and segments it end to end into an output bag, against the same frames read
twice from the video into overlay videos, so its FPS ratio shows whether reading and writing bags
costs frames.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from runtime import ops
from runtime.engines import input_spec
from runtime.ops import opencv_chain, reference
from runtime.pipeline import GLASS_TO_GLASS, STAGES, Camera, Processor, percentiles, run_pipeline, run_rig
from runtime.rig import Feed
from runtime.video import NullSink, VideoSink, open_source

EXIT_BAD_INPUT = 2
LEVELS = ("model", "ops", "e2e", "rig", "soak", "drive")
DEFAULT_LEVELS = ("model", "ops", "e2e")  # rig, soak and drive take minutes: run when named
# The drive level's camera topics (JPEG, as dashcam loggers record them).
DRIVE_TOPICS = ("/camera/front/image_raw/compressed", "/camera/rear/image_raw/compressed")
SEGMENT = Path(__file__).resolve().parents[1] / "runtime" / "segment.py"
# How often the rig level reads its processes' resident memory.
RSS_POLL_S = 0.05
DEFAULT_MODELS = Path("models/export")
DEFAULT_VIDEO = Path("data/prepared/synthetic/video/dashcam.mp4")
NAMED_RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440),
                     "2160p": (3840, 2160)}
OPS = ("preprocess", "upsample_argmax", "argmax", "blend")
BASELINES = ("opencv", "numpy")  # what the fast implementations are compared against
# Extra baselines of one op: the lossy shortcut taken instead of an exact upsample + argmax.
OP_BASELINES = {"upsample_argmax": {"shortcut": opencv_chain.upsample_argmax_shortcut}}
# Implementations timed again under load (the NumPy reference is the semantics, not a contender).
LOADED_SKIP = ("numpy",)
# The ops level's logits are smooth random class fields varying over this many low-resolution
# pixels: their class boundaries cross about 11 % of the 2x2 cells at 128x256 (the synthetic
# street labels cross 7 %), where independent noise would make every cell a boundary.
SCENE_SCALE = 24
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


def scene_logits(rng: np.random.Generator, classes: int, height: int, width: int) -> np.ndarray:
    """float32 (K, h, w) logits shaped like a network's: each class a smooth random field
    (a coarse grid of standard normals times 3, bilinearly resized), not per-pixel noise."""
    import cv2

    coarse = rng.standard_normal((classes, max(height // SCENE_SCALE, 2), max(width // SCENE_SCALE, 2)),
                                 dtype=np.float32) * 3
    return np.stack([cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR) for field in coarse])


class InferenceLoad:
    """An engine inferring back to back in a background thread for the `with` block: the
    condition the ops run in inside the pipeline. `inferences` counts the calls finished."""

    def __init__(self, engine):
        self.engine = engine
        self.batch = synthetic_batch(engine, np.random.default_rng(1))
        self.inferences = 0
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-inference-load", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.engine.infer(self.batch)
                self.inferences += 1
                self._started.set()
        except BaseException as exc:  # re-raised by __exit__ in the timing thread
            self._error = exc
            self._started.set()

    def __enter__(self) -> "InferenceLoad":
        self._thread.start()
        self._started.wait()  # the session is warm and running
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error


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

    def __init__(self, cuda_ops):
        self._ops = cuda_ops

    def bind(self, op: str, *args) -> Callable[[], object]:
        # The frame / logits (and blend's labels) live on the device; the palette is host data.
        device = self._ops.device
        uploaded = 2 if op == "blend" else 1
        args = [device.to_device(a) for a in args[:uploaded]] + list(args[uploaded:])
        function = getattr(self._ops, op)

        def call():
            function(*args)
            device.synchronize(None)
        return call


def _cuda_ops():
    """The CUDA kernels when a CUDA library (pycuda or CuPy) and a GPU are both here, else None.
    They run in the device's primary context (runtime.cuda.device), the one TensorRT and ONNX
    Runtime use, made current around every call."""
    try:
        from runtime.cuda.ops import CudaOps
        return _SynchronisedCuda(CudaOps())
    except Exception:  # noqa: BLE001 - no CUDA library, no driver or no device all mean "no CUDA row"
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
    so it is measured once under that size. upsample_argmax gets `scene_logits`.
    """
    rng = np.random.default_rng(0)
    in_h, in_w = input_hw
    palette = rng.integers(0, 256, (classes, 3), dtype=np.uint8)
    lowres = scene_logits(rng, classes, max(in_h // 4, 1), max(in_w // 4, 1))
    for label, (width, height) in resolutions:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, classes, (height, width), dtype=np.uint8)
        yield "preprocess", label, (width, height), (frame, input_hw, IMAGENET_MEAN, IMAGENET_STD)
        yield "upsample_argmax", label, (width, height), (lowres, (height, width))
        yield "blend", label, (width, height), (frame, labels, palette, 0.5)
    logits = rng.standard_normal((classes, in_h, in_w), dtype=np.float32)
    yield "argmax", f"{in_w}x{in_h}", (in_w, in_h), (logits,)


def _op_record(values: list[float], moved: int, loaded: list[float] | None) -> dict:
    record = summarize(values)
    record.update(bytes=moved, gbps=gbps(moved, record["p50_ms"]))
    if loaded is not None:
        record["loaded"] = summarize(loaded)
        record["load_ratio"] = record["loaded"]["p50_ms"] / record["p50_ms"] if record["p50_ms"] else None
    return record


def bench_ops(resolutions, input_hw, classes: int, warmup: int, iters: int, load_engine=None):
    """{op: {impl | baseline | "memcpy" | "speedup": {res: record}}} and the raw samples per series.

    With `load_engine`, every implementation but the NumPy reference is timed a second time
    while that engine infers back to back in another thread: record["loaded"] holds those
    figures, record["load_ratio"] their p50 over the idle p50, and the speed-ups gain
    "_loaded" entries against the baselines timed under the same load.
    """
    impls = _implementations()
    results: dict = {}
    series: dict[str, list[float]] = {}
    for op, label, frame_wh, args in op_cases(resolutions, input_hw, classes):
        nbytes = op_bytes(op, frame_wh, input_hw, classes)
        half = nbytes // 2
        copy_src, copy_dst = np.ones(half, np.uint8), np.empty(half, np.uint8)
        candidates = {name: _bind(impl, op, *args) for name, impl in impls.items()}
        for name, function in OP_BASELINES.get(op, {}).items():
            candidates[name] = functools.partial(function, *args)
        candidates["memcpy"] = lambda: np.copyto(copy_dst, copy_src)
        samples = time_round_robin(candidates, warmup, iters)
        loaded: dict[str, list[float]] = {}
        if load_engine is not None:
            with InferenceLoad(load_engine):
                loaded = time_round_robin({name: call for name, call in candidates.items() if name not in LOADED_SKIP},
                                          warmup, iters)
        per_op = results.setdefault(op, {})
        for name, values in samples.items():
            moved = 2 * half if name == "memcpy" else nbytes
            per_op.setdefault(name, {})[label] = _op_record(values, moved, loaded.get(name))
            series[f"{op}/{name}/{label}"] = values
            if name in loaded:
                series[f"{op}/{name}/{label}/loaded"] = loaded[name]
        memcpy_gbps = per_op["memcpy"][label]["gbps"]
        baselines = [*BASELINES, *OP_BASELINES.get(op, {})]
        speedups = {}
        for name in impls:
            record = per_op[name][label]
            record["fraction_of_memcpy"] = record["gbps"] / memcpy_gbps if memcpy_gbps else None
            if name in BASELINES:
                continue
            for baseline in baselines:
                speedups[f"{name}_vs_{baseline}"] = per_op[baseline][label]["p50_ms"] / record["p50_ms"]
                if "loaded" in record and "loaded" in per_op[baseline][label]:
                    speedups[f"{name}_vs_{baseline}_loaded"] = (per_op[baseline][label]["loaded"]["p50_ms"]
                                                                / record["loaded"]["p50_ms"])
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


def synthetic_batch(engine, rng: np.random.Generator) -> np.ndarray:
    """A random batch of one in the engine's input layout."""
    dtype, shape = input_spec(engine.contract)
    if dtype == np.uint8:
        return rng.integers(0, 256, (1, *shape), dtype=np.uint8)
    return rng.standard_normal((1, *shape), dtype=np.float32)


def bench_models(engines: dict[str, object], warmup: int, iters: int):
    rng = np.random.default_rng(0)
    candidates = {name: functools.partial(engine.infer, synthetic_batch(engine, rng))
                  for name, engine in engines.items()}
    samples = time_round_robin(candidates, warmup, iters)
    results = {}
    for name, engine in engines.items():
        record = summarize(samples[name])
        record["intra_op_threads"] = intra_op_threads(engine)
        results[name] = record
    return results, samples


# ---------------------------------------------------------------------------- e2e level


def bench_e2e(engine, video: str, frames: int, encode: bool, model_fps: float | None = None):
    """run_pipeline over the video per mode: {mode: record} and samples per mode/stage.

    With the artefact's model-only FPS, each offline mode's record gets `ratio_to_model`, its
    FPS over that: 1.0 when decode, the ops and encode hide entirely behind inference.
    """
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
        if model_fps and not realtime:
            record["ratio_to_model"] = stats.fps / model_fps
        for stage in (*STAGES, GLASS_TO_GLASS):
            values = stats.latency_ms[stage]
            record[stage] = {key: value for key, value in summarize(values).items() if key != "fps"}
            series[f"{mode}/{stage}"] = values
        results[mode] = record
    return results, series


# --------------------------------------------------------------------------- rig and soak


def write_drive(video: str, path: Path, frames: int, topics=DRIVE_TOPICS) -> int:
    """The video's first `frames` frames as a drive: one JPEG CompressedImage per frame on every
    topic, stamped at the video's frame rate. Returns the frames written."""
    from runtime.bags import ImageMcap

    written = 0
    with open_source(video) as source, path.open("wb") as stream:
        drive = ImageMcap(stream)
        channels = [drive.channel(topic, "sensor_msgs/msg/CompressedImage") for topic in topics]
        for index, frame in source:
            if written == frames:
                break
            stamp = round(index * 1e9 / source.fps)
            for channel, topic in zip(channels, topics):
                drive.jpeg(channel, drive.header(stamp, topic.split("/")[2]), frame, stamp, quality=95)
            written += 1
        drive.finish()
    return written


def bench_drive(model: Path, video: str, frames: int, thread_args: list[str], timeout_s: float = 3600) -> dict:
    """{"mp4": record, "drive": record, "fps_ratio": drive / mp4} (rig_record): the video's frames as
    a 2-topic MCAP drive segmented into an output bag (labels and JPEG overlays), against the same
    frames from the video, given twice, into two H.264 overlay videos; one segment.py process each."""
    with tempfile.TemporaryDirectory(prefix="stpg-bench-drive-") as scratch:
        scratch = Path(scratch)
        drive = scratch / "drive.mcap"
        count = write_drive(video, drive, frames)
        common = [sys.executable, str(SEGMENT), "--model", str(model), "--max-frames", str(count), "--no-progress",
                  *thread_args]
        records = {}
        for name, arguments in (("mp4", ["--source", video, "--source", video, "--out", str(scratch / "mp4")]),
                                ("drive", ["--source", str(drive), *[item for topic in DRIVE_TOPICS
                                                                     for item in ("--topic", topic)],
                                           "--out-bag", str(scratch / "out.mcap")])):
            summary = scratch / f"{name}.json"
            peaks = run_together([common + arguments + ["--json", str(summary)]], timeout_s)
            records[name] = rig_record([json.loads(summary.read_text())], peaks)
    mp4_fps = records["mp4"]["fps"]
    return {"frames": count, "topics": list(DRIVE_TOPICS), **records,
            "fps_ratio": records["drive"]["fps"] / mp4_fps if mp4_fps else None}


def resident_bytes(pid: int | str = "self") -> int | None:
    """VmRSS of a process, None once it has exited (or where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def open_fds() -> int | None:
    """Open file descriptors of this process (None where /proc is missing)."""
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/fd"))
    return None


def run_together(commands: list[list[str]], timeout_s: float) -> list[int]:
    """Start the commands at once and wait for all; each one's peak resident bytes, sampled.

    A command that fails is a BenchmarkError naming its last stderr line."""
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    peaks = [0] * len(processes)
    deadline = time.monotonic() + timeout_s
    try:
        while any(process.poll() is None for process in processes):
            if time.monotonic() > deadline:
                raise BenchmarkError(f"segment.py ran past {timeout_s:.0f} s in the rig level; use fewer --rig-frames")
            for position, process in enumerate(processes):
                peaks[position] = max(peaks[position], resident_bytes(process.pid) or 0)
            time.sleep(RSS_POLL_S)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            stderr = process.communicate()[1]
            if process.returncode not in (0, None, -9):
                last = (stderr.strip().splitlines() or ["no message"])[-1]
                raise BenchmarkError(f"segment.py failed in the rig level: {last}")
    return peaks


def rig_record(summaries: list[dict], peaks: list[int]) -> dict:
    """Aggregate FPS (frames of every camera over the longest wall time: the cameras run side by
    side), per-camera FPS, the worst camera's p99 glass to glass and the peak resident memory summed
    over the processes."""
    cameras = [camera for summary in summaries for camera in summary.get("cameras", {"": summary}).values()]
    frames = sum(camera["frames_out"] for camera in cameras)
    wall = max(summary["wall_s"] for summary in summaries)
    worst = [camera["latency_ms"][GLASS_TO_GLASS]["p99"] for camera in cameras]
    return {"fps": frames / wall if wall > 0 else 0.0, "frames": frames, "wall_s": wall,
            "camera_fps": [camera["fps"] for camera in cameras],
            "worst_p99_glass_to_glass_ms": max((v for v in worst if v is not None), default=None),
            "rss_mb": sum(peaks) / 2**20, "processes": len(summaries)}


def bench_rig(model: Path, video: str, counts: list[int], frames: int, encode: bool, thread_args: list[str],
              timeout_s: float = 3600):
    """{N: {"rig": record, "separate": record, "fps_ratio": rig / separate, "rss_ratio": rig / separate}}
    for N copies of the video (rig_record); with `encode` every camera writes an H.264 overlay."""
    results = {}
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="stpg-bench-rig-") as scratch:
            scratch = Path(scratch)
            common = [sys.executable, str(SEGMENT), "--model", str(model), "--max-frames", str(frames),
                      "--no-progress", *thread_args]

            def outputs(name: str, cameras: int) -> list[str]:
                """--json, and with --encode an overlay file (one camera) or folder (a rig)."""
                out = scratch / (name if cameras > 1 else f"{name}.mp4")
                return ["--json", str(scratch / f"{name}.json")] + (["--out", str(out)] if encode else [])

            peaks = run_together([common + ["--source", video] * count + outputs("rig", count)], timeout_s)
            rig = rig_record([json.loads((scratch / "rig.json").read_text())], peaks)
            names = [f"separate{index}" for index in range(count)]
            peaks = run_together([common + ["--source", video] + outputs(name, 1) for name in names], timeout_s)
            separate = rig_record([json.loads((scratch / f"{name}.json").read_text()) for name in names], peaks)
        results[str(count)] = {"rig": rig, "separate": separate,
                               "fps_ratio": rig["fps"] / separate["fps"] if separate["fps"] else None,
                               "rss_ratio": rig["rss_mb"] / separate["rss_mb"] if separate["rss_mb"] else None}
    return results


def bench_rig_realtime(model: Path, video: str, cameras: int, frames: int, encode: bool, thread_args: list[str],
                       timeout_s: float = 3600) -> dict:
    """One rig of `cameras` copies of the video in real time (each paced at the video's frame rate,
    dropping its oldest frame rather than queueing): each camera's delivered FPS, their spread
    (fastest / slowest - 1), the worst p99 glass to glass of delivered frames, and that over the
    p50 of one inference (what a queue building up would inflate)."""
    with tempfile.TemporaryDirectory(prefix="stpg-bench-rig-rt-") as scratch:
        summary_path = Path(scratch) / "rig.json"
        command = [sys.executable, str(SEGMENT), "--model", str(model), "--max-frames", str(frames), "--no-progress",
                   "--realtime", *thread_args, *["--source", video] * cameras, "--json", str(summary_path)]
        if encode:
            command += ["--out", str(Path(scratch) / "out")]
        run_together([command], timeout_s)
        summary = json.loads(summary_path.read_text())
    per_camera = list(summary.get("cameras", {"": summary}).values())
    fps = [camera["fps"] for camera in per_camera]
    worst = max((c["latency_ms"][GLASS_TO_GLASS]["p99"] for c in per_camera
                 if c["latency_ms"][GLASS_TO_GLASS]["p99"] is not None), default=None)
    infer = max((c["latency_ms"]["infer"]["p50"] for c in per_camera if c["latency_ms"]["infer"]["p50"]), default=None)
    return {"cameras": cameras, "camera_fps": fps, "dropped": [camera["dropped"] for camera in per_camera],
            "fps_spread": max(fps) / min(fps) - 1 if fps and min(fps) > 0 else None,
            "worst_p99_glass_to_glass_ms": worst, "infer_p50_ms": infer,
            "p99_over_infer": worst / infer if worst is not None and infer else None}


class SoakWindows:
    """Per window of `size` frames: the frame count at its end, resident MB, open descriptors and
    the window's p99 glass to glass (`resident` and `fds` read the process; given for tests)."""

    def __init__(self, size: int, resident: Callable[[], int | None] = resident_bytes,
                 fds: Callable[[], int | None] = open_fds):
        self.size, self._resident, self._fds = size, resident, fds
        self.frames = 0
        self.windows: list[dict] = []
        self._latencies: list[float] = []

    def add(self, glass_to_glass_ms: float) -> None:
        self.frames += 1
        self._latencies.append(glass_to_glass_ms)
        if len(self._latencies) == self.size:
            rss = self._resident()
            self.windows.append({"frames": self.frames, "rss_mb": None if rss is None else rss / 2**20,
                                 "fds": self._fds(), "p99_ms": percentiles(self._latencies, (99,))["p99"]})
            self._latencies = []

    def record(self) -> dict:
        """The windows, and the drift from the first: last resident memory over the first, the most
        descriptors more than the first, the highest p99 over the first."""
        windows = self.windows
        first, last = (windows[0], windows[-1]) if windows else ({}, {})
        rss = first.get("rss_mb") and last.get("rss_mb") and last["rss_mb"] / first["rss_mb"]
        fds = None if not windows or first["fds"] is None else max(w["fds"] for w in windows) - first["fds"]
        p99 = max(w["p99_ms"] for w in windows) / first["p99_ms"] if windows and first["p99_ms"] else None
        return {"frames": self.frames, "window": self.size, "windows": windows, "rss_ratio": rss or None,
                "fds_added": fds, "p99_ratio": p99}


def bench_soak(engine, video: str, frames: int, window: int, encode: bool) -> dict:
    """One camera looping the video for `frames` frames, offline, sampled per window."""
    windows = SoakWindows(window)
    with Feed(open_source(video), loop=True) as feed, tempfile.TemporaryDirectory(prefix="stpg-bench-") as scratch:
        sinks = [VideoSink(Path(scratch) / "soak.mp4", feed.fps, feed.size)] if encode else [NullSink()]
        camera = Camera(feed, sinks, max_frames=frames, on_frame=lambda frame: windows.add(frame.glass_to_glass_ms()))
        stats = run_rig([camera], Processor(engine)).cameras[camera.name]
    return {**windows.record(), "fps": stats.fps}


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

