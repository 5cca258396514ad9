"""Decode -> preprocess -> infer -> postprocess -> encode as concurrent stages, for one camera or a rig.

One thread per stage and camera, joined by bounded queues: the heavy work (video codecs, the
C ops, ONNX Runtime / TensorRT) releases the GIL, so the stages overlap and throughput approaches
that of the slowest stage. One thread per stage also keeps each camera's frames in order for free.
A rig of several cameras shares one inference thread and one engine: it batches the frames
waiting across cameras round robin and hands each output back to its camera (run_rig); a
single stream is a rig of one (run_pipeline).

Offline mode blocks on full queues, so every frame is processed. Real-time mode never blocks
in front of inference: a new frame evicts the oldest waiting one of its camera (counted as
dropped), so latency stays bounded when inference is slower than the camera.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import queue
import random
import threading
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from runtime import ops
from runtime.engines.base import Engine
from runtime.ops.reference import nearest_indices
from runtime.redact import redact

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")
LETTERBOX_MODES = ("auto", "on", "off")
# "auto" letterboxes a frame whose aspect ratio is more than this fraction off the network
# input's (a 16:9 camera on a 2:1 network is 12.5 % off, a 4:3 one 50 %).
LETTERBOX_TOLERANCE = 0.05
# Letterbox sides and offsets are multiples of the stride of low-resolution logits, so the
# frame's part of them is whole logit pixels.
LOGIT_STRIDE = 4
GLASS_TO_GLASS = "glass_to_glass"
SUMMARY_PERCENTILES = (50, 90, 99)
# Latency samples kept per stage: percentiles are exact up to this many frames, and a run of
# hours holds this many floats per stage instead of one per frame.
RESERVOIR_SIZE = 20_000
_LOGIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def percentiles(samples: Sequence[float], qs: Sequence[float] = SUMMARY_PERCENTILES) -> dict[str, float | None]:
    """{"p50": ..., "p90": ...} with numpy's linear interpolation; None for no samples."""
    if len(samples) == 0:
        return {f"p{q:g}": None for q in qs}
    values = np.percentile(np.asarray(samples, dtype=np.float64), list(qs))
    return {f"p{q:g}": float(v) for q, v in zip(qs, values)}


@dataclasses.dataclass(eq=False)
class Frame:
    """One frame on its way through the stages, with `(start_ns, end_ns)` per stage done.

    Times are `time.perf_counter_ns()`. `labels` is the map postprocess made (input size for
    full-resolution logits, else frame size); `frame_labels` is it at frame size, made only
    when a sink asks for labels.
    """

    index: int
    image: np.ndarray
    stamps: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    batch: np.ndarray | None = None
    output: np.ndarray | None = None
    labels: np.ndarray | None = None
    frame_labels: np.ndarray | None = None
    overlay: np.ndarray | None = None
    nonfinite: bool = False  # the network output had inf or NaN

    def stage_ms(self, stage: str) -> float:
        start, end = self.stamps[stage]
        return (end - start) / 1e6

    def glass_to_glass_ms(self) -> float:
        """From the frame being captured (decoded) to its output being written."""
        return (self.stamps["encode"][1] - self.stamps["decode"][1]) / 1e6


class Reservoir:
    """A bounded uniform sample of a stream of values (Vitter's algorithm R).

    It holds every value until `size` have come, so percentiles are exact for runs shorter than
    that; afterwards the n-th value replaces a random held one with probability size / n, so
    memory stays flat over a run of hours while the sample stays uniform over the whole run.
    """

    def __init__(self, size: int = RESERVOIR_SIZE, rng: random.Random | None = None):
        if size < 1:
            raise ValueError(f"a reservoir holds at least one value, got size {size}")
        self.size = size
        self.seen = 0
        self._values: list[float] = []
        self._rng = rng if rng is not None else random.Random(0)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self._values) < self.size:
            self._values.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self._values[slot] = value

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self):
        return iter(self._values)

    def __getitem__(self, index):
        return self._values[index]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._values, dtype=dtype)


@dataclasses.dataclass
class RunStats:
    frames_in: int = 0  # frames the source delivered
    frames_out: int = 0  # frames every sink received
    dropped: int = 0  # evicted in real-time mode
    corrupt: int = 0  # skipped by the source as undecodable
    wall_s: float = 0.0
    interrupted: bool = False
    latency_ms: dict[str, Reservoir] = dataclasses.field(
        default_factory=lambda: {name: Reservoir() for name in (*STAGES, GLASS_TO_GLASS)})
    error: str | None = None  # why a rig's camera ended early (its source failed)
    outages: list[dict] = dataclasses.field(default_factory=list)  # a live source's reconnections
    nonfinite_frames: int = 0  # frames out whose network output had inf or NaN

    @property
    def fps(self) -> float:
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    def record(self, frame: Frame) -> None:
        self.nonfinite_frames += frame.nonfinite
        for stage in STAGES:
            self.latency_ms[stage].add(frame.stage_ms(stage))
        self.latency_ms[GLASS_TO_GLASS].add(frame.glass_to_glass_ms())

    def summary(self) -> dict:
        """JSON-ready counts, FPS and p50/p90/p99 milliseconds per stage and glass to glass."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
            "nonfinite_frames": self.nonfinite_frames,
            "interrupted": self.interrupted,
            "wall_s": self.wall_s,
            "fps": self.fps,
            "latency_ms": {name: percentiles(samples) for name, samples in self.latency_ms.items()},
        }


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class ThreadBudget:
    """How the pipeline shares the cores: the engine's intra-op threads (None when inference
    runs on another device) and the C ops' threads, which run at the same time."""

    cores: int
    inference: int | None
    ops: int

    @property
    def oversubscribed(self) -> bool:
        """More threads than cores, beyond the one op thread that runs between inferences."""
        return (self.inference or 0) + self.ops > self.cores + 1 or max(self.inference or 0, self.ops) > self.cores

    def describe(self) -> str:
        inference = "inference on its device" if self.inference is None else f"inference {self.inference}"
        shared = (self.inference or 0) + self.ops > self.cores
        note = " (more threads than cores)" if self.oversubscribed else " (ops between inferences)" if shared else ""
        return f"threads: {inference} + ops {self.ops} on {self.cores} cores{note}"

    def summary(self) -> dict:
        return {"cores": self.cores, "inference": self.inference, "ops": self.ops}


def thread_budget(inference: int | None = None, ops_threads: int | None = None, *, cores: int | None = None,
                  cpu_inference: bool = True) -> ThreadBudget:
    """Split the cores between inference and the ops.

    By default inference takes every core and the ops one thread that runs between
    inferences: the ops are short next to inference, and a second OpenMP thread would wait for
    any of its team that inference has descheduled (several times slower beside inference than
    alone). Halving inference's threads to keep the ops a core of their own costs more frames
    than it saves (docs/benchmarks.md). A count given is kept and the other takes what is
    left, at least one; both given are kept even beyond the cores.
    """
    cores = cores or usable_cores()
    if not cpu_inference:
        return ThreadBudget(cores, None, ops_threads or 1)
    if inference is None and ops_threads is None:
        return ThreadBudget(cores, cores, 1)
    if ops_threads is None:
        ops_threads = max(1, cores - inference)
    if inference is None:
        inference = max(1, cores - ops_threads)
    return ThreadBudget(cores, inference, ops_threads)


def letterbox_region(frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the network input that a frame fills with its aspect ratio
    kept: as large as fits, centred, and along every input side that is a multiple of
    LOGIT_STRIDE, size and offset rounded down to multiples of it (so the frame's logits are
    whole pixels)."""
    (frame_h, frame_w), (input_h, input_w) = frame_hw, input_hw
    if input_h * frame_w <= input_w * frame_h:  # the height limits
        height, width = input_h, frame_w * input_h // frame_h
    else:
        height, width = frame_h * input_w // frame_w, input_w

    def down(value: int, input_side: int) -> int:
        return value if input_side % LOGIT_STRIDE else value // LOGIT_STRIDE * LOGIT_STRIDE

    height, width = max(down(height, input_h), 1), max(down(width, input_w), 1)
    if not input_h % LOGIT_STRIDE:
        height = max(height, LOGIT_STRIDE)
    if not input_w % LOGIT_STRIDE:
        width = max(width, LOGIT_STRIDE)
    return down((input_h - height) // 2, input_h), down((input_w - width) // 2, input_w), height, width


def needs_letterbox(mode: str, frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> bool:
    """Whether `mode` letterboxes a frame of this size: "on", "off", or "auto" when its aspect
    ratio is more than LETTERBOX_TOLERANCE off the input's."""
    if mode != "auto":
        return mode == "on"
    ratio = (frame_hw[1] / frame_hw[0]) / (input_hw[1] / input_hw[0])
    return abs(math.log(ratio)) > math.log1p(LETTERBOX_TOLERANCE)


class Processor:
    """The per-frame work of each stage, callable one at a time so a benchmark can time each.

    `letterbox` ("auto", "on", "off") decides per frame size whether the frame is stretched over
    the network input or fitted into it with its aspect ratio kept, the rest padded with the
    mean colour; the padding's labels are cut off again before the labels reach frame size.
    """

    def __init__(self, engine: Engine, *, alpha: float = 0.5, letterbox: str = "auto"):
        if letterbox not in LETTERBOX_MODES:
            raise ValueError(f"letterbox must be one of {LETTERBOX_MODES}, got {letterbox!r}")
        self.engine = engine
        self.contract = engine.contract
        self.alpha = float(alpha)
        self.letterbox = letterbox
        self.palette = np.asarray(self.contract.palette, dtype=np.uint8).reshape(-1, 3)
        self._regions: dict[tuple[int, int], tuple[int, int, int, int] | None] = {}
        self._stacks: dict[int, np.ndarray] = {}  # rig batches by size, used by the inference thread only

    def region(self, frame_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of the network input a frame of this size fills, or None
        where it is stretched over all of it."""
        key = (int(frame_hw[0]), int(frame_hw[1]))
        if key not in self._regions:
            input_hw = tuple(self.contract.input_size)
            region = letterbox_region(key, input_hw) if needs_letterbox(self.letterbox, key, input_hw) else None
            self._regions[key] = None if region == (0, 0, *input_hw) else region
        return self._regions[key]

    def upload(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The frame where the later stages read it: here the host frame itself; the GPU frame
        path (runtime.gpu_path) returns its device copy."""
        return frame_bgr

    def preprocess(self, frame_bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The network input batch of one frame, in the contract's layout (written into `out`
        when given: a tensor from an earlier frame)."""
        tensor = ops.preprocess(frame_bgr, self.contract.input_size, self.contract.mean, self.contract.std,
                                layout=self.contract.input_layout, out=out, region=self.region(frame_bgr.shape[:2]))
        return tensor[np.newaxis]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.infer(batch)

    def infer_batch(self, batches: Sequence) -> list:
        """Outputs `(1, ...)` of several cameras' input batches `(1, ...)` in one inference.

        Stacked along the batch axis where the engine takes several images (padded with the
        last one up to a multiple of a fixed batch), one after another where its graph takes
        exactly one; the stacking buffers are kept per batch size (a rig has few) and reused.
        """
        fixed = self.engine.fixed_batch
        if len(batches) == 1 or fixed == 1:
            return [self.infer(batch) for batch in batches]
        count = len(batches)
        size = count if fixed is None else -(-count // fixed) * fixed
        output = self.infer(self._stack(batches, size))
        return [self._item(output, index) for index in range(count)]

    def _stack(self, batches: Sequence[np.ndarray], size: int) -> np.ndarray:
        """The batches in one array of `size` images, the last repeated to fill it."""
        stacked = self._stacks.get(size)
        if stacked is None:
            stacked = self._stacks[size] = np.empty((size, *batches[0].shape[1:]), batches[0].dtype)
        for index in range(size):
            stacked[index] = batches[min(index, len(batches) - 1)][0]
        return stacked

    @staticmethod
    def _item(output, index: int):
        """The `index`-th image's output as a batch of one."""
        return output[index:index + 1]

    def postprocess(self, output: np.ndarray, frame_hw: tuple[int, int]) -> tuple[np.ndarray, bool]:
        """(uint8 label map, whether the logits had inf or NaN): the map is frame size from
        low-resolution logits, input size (less any letterbox padding) from full logits or
        labels. The op that reads the logits checks them in the same pass; only the frame's
        part of a letterboxed output is checked, as only it is used."""
        kind = self.contract.output_kind
        output = self._crop(output[0], self.region(frame_hw))
        if kind == "labels":
            return np.ascontiguousarray(output, dtype=np.uint8), False
        logits = output
        if logits.dtype not in _LOGIT_DTYPES:
            logits = logits.astype(np.float32)
        logits = np.ascontiguousarray(logits)
        if kind == "lowres_logits":
            return ops.upsample_argmax(logits, tuple(frame_hw), report_nonfinite=True)
        return ops.argmax(logits, report_nonfinite=True)

    def _crop(self, output: np.ndarray, region: tuple[int, int, int, int] | None) -> np.ndarray:
        """The part of one output (labels (H, W) or logits (K, H, W) at any stride) that covers
        the frame's region of the input."""
        if region is None:
            return output
        top, left, height, width = region
        input_h, input_w = self.contract.input_size
        out_h, out_w = output.shape[-2:]
        # Whole output pixels where the region is aligned to them, else every one it touches.
        rows = slice(top * out_h // input_h, -(-(top + height) * out_h // input_h))
        cols = slice(left * out_w // input_w, -(-(left + width) * out_w // input_w))
        return output[..., rows, cols]

    def render(self, frame_bgr: np.ndarray, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return ops.blend(frame_bgr, labels, self.palette, self.alpha, out=out)

    @staticmethod
    def frame_labels(labels: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
        """The label map at frame size, sampled nearest as the overlay shows it."""
        height, width = frame_hw
        if labels.shape == (height, width):
            return labels
        return labels[np.ix_(nearest_indices(labels.shape[0], height), nearest_indices(labels.shape[1], width))]


class _Recycler:
    """Arrays handed back once their frame is done with them, so a stream reuses a few buffers
    instead of faulting in fresh pages for every frame, a cost that grows with the frame size
    (`python -m bench` measures the frame path; docs/benchmarks.md)."""

    def __init__(self, keep: int):
        self._spare: collections.deque[np.ndarray] = collections.deque(maxlen=keep)  # thread-safe ends

    def take(self, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """A spare array (of `shape`, where given), or None: the caller allocates."""
        try:
            array = self._spare.pop()
        except IndexError:
            return None
        return array if shape is None or array.shape == shape else None

    def give(self, array: np.ndarray | None) -> None:
        if array is not None:
            self._spare.append(array)



class RoundRobin:
    """The order in which the rig's one inference serves its cameras.

    Each batch takes at most one waiting frame per camera, at most `most` in all, looking first
    at the camera after the last one the previous batch took: a camera with frames always
    waiting (fast, or a file read offline) gets one slot per batch like every other, and a
    stalled one only leaves its slot empty.
    """

    def __init__(self, cameras: int, most: int):
        self.cameras, self.most = cameras, most
        self._start = 0

    def pick(self, take: Callable[[int], object]) -> list[tuple[int, object]]:
        """[(camera, item)] for this batch; `take(camera)` returns its waiting item or None."""
        chosen = []
        for step in range(self.cameras):
            if len(chosen) == self.most:
                break
            camera = (self._start + step) % self.cameras
            item = take(camera)
            if item is not None:
                chosen.append((camera, item))
        if chosen:
            self._start = (chosen[-1][0] + 1) % self.cameras
        return chosen


class _Stopped(Exception):
    """Another stage failed or the run was interrupted; this stage leaves quietly."""


_END = object()
_POLL_S = 0.05
# Pre/post-processing calls that may run at once in a rig: as many as one stream makes (its
# preprocess and postprocess stages), so N cameras ask of the cores what one stream does.
OP_CALLS = 2


@dataclasses.dataclass(eq=False)
class Camera:
    """One stream of a rig: its frames, its sinks and how it is paced.

    `source` yields `(index, frame_bgr)`; `realtime` evicts the oldest frame waiting for
    inference instead of blocking; `pace_fps` releases the frames at that rate (a file standing
    in for a live camera); `on_frame` is called from the camera's encode thread with each
    finished Frame (its overlay array is reused once the callback returns).
    """

    source: Iterable[tuple[int, np.ndarray]]
    sinks: Sequence = ()
    name: str = "cam0"
    realtime: bool = False
    pace_fps: float | None = None
    max_frames: int | None = None
    on_frame: Callable[[Frame], None] | None = None


@dataclasses.dataclass
class RigStats:
    """Counts of the whole rig: per-camera RunStats, the run's wall time and the batches inferred."""

    cameras: dict[str, RunStats]
    wall_s: float = 0.0
    interrupted: bool = False
    batches: int = 0
    frames_inferred: int = 0

    @property
    def frames_out(self) -> int:
        return sum(stats.frames_out for stats in self.cameras.values())

    @property
    def fps(self) -> float:
        """Frames out of every camera over the rig's wall time."""
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mean_batch(self) -> float | None:
        return self.frames_inferred / self.batches if self.batches else None


class _Stream:
    """The per-camera stages of a rig: decode -> preprocess -> [the rig's inference] ->
    postprocess -> encode, joined by this camera's bounded queues."""

    def __init__(self, rig: "_Rig", camera: Camera, queue_size: int):
        self.rig, self.camera = rig, camera
        self.sinks = list(camera.sinks)
        self.need_overlay = any(sink.needs_overlay for sink in self.sinks)
        self.need_labels = any(sink.needs_labels for sink in self.sinks)
        self.stats = RunStats()
        # Real-time mode holds at most one frame between stages, so latency stays a few frame
        # times; the one in front of inference is always the newest.
        self.queues = [queue.Queue(maxsize=1 if camera.realtime else queue_size) for _ in range(4)]
        # Enough spares for every frame that can be in flight between taking and giving back.
        self.batches, self.overlays = _Recycler(queue_size + 4), _Recycler(queue_size + 4)

    def _put_evicting(self, q: queue.Queue, item) -> None:
        """Put without waiting, evicting the oldest waiting frame (this thread is the only producer)."""
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                try:
                    q.get_nowait()
                    self.stats.dropped += 1
                except queue.Empty:
                    pass

    def decode(self) -> None:
        rig, camera = self.rig, self.camera
        frames = iter(camera.source)
        started = time.perf_counter()
        count = 0
        while camera.max_frames is None or count < camera.max_frames:
            if camera.pace_fps:
                rig.wait_until(started + count / camera.pace_fps)
            if rig.stop.is_set():
                raise _Stopped
            start = time.perf_counter_ns()
            try:
                item = next(frames, None)
            except Exception as exc:
                if not rig.isolate:
                    raise
                # A camera whose source fails ends like one whose source ends; the rest go on.
                self.stats.error = redact(" ".join(f"{type(exc).__name__}: {exc}".split()))
                item = None
            end = time.perf_counter_ns()
            if item is None:
                break
            index, image = item
            count += 1
            self.stats.frames_in += 1
            rig.put(self.queues[0], Frame(index, image, {"decode": (start, end)}))
        rig.put(self.queues[0], _END)

    def _stage(self, name: str, work: Callable[[Frame], None], q_in: queue.Queue, q_out: queue.Queue,
               evict: bool = False) -> None:
        rig = self.rig
        while True:
            frame = rig.get(q_in)
            if frame is _END:
                rig.put(q_out, _END)
                rig.ready.set()
                return
            rig.ready.set()  # room behind inference
            start = time.perf_counter_ns()
            with rig.op_calls:
                work(frame)
            frame.stamps[name] = (start, time.perf_counter_ns())
            (self._put_evicting if evict else rig.put)(q_out, frame)
            rig.ready.set()  # a frame for inference

    def preprocess(self) -> None:
        processor = self.rig.processor

        def work(frame: Frame) -> None:
            frame.image = processor.upload(frame.image)
            # every input tensor has the contract's shape, whatever the frame size
            frame.batch = processor.preprocess(frame.image, out=self.batches.take())

        self._stage("preprocess", work, self.queues[0], self.queues[1], evict=self.camera.realtime)

    def postprocess(self) -> None:
        processor = self.rig.processor

        def work(frame: Frame) -> None:
            frame_hw = frame.image.shape[:2]
            frame.labels, frame.nonfinite = processor.postprocess(frame.output, frame_hw)
            frame.output = None
            if self.need_overlay:
                frame.overlay = processor.render(frame.image, frame.labels, out=self.overlays.take(frame.image.shape))
            if self.need_labels:
                frame.frame_labels = processor.frame_labels(frame.labels, frame_hw)

        self._stage("postprocess", work, self.queues[2], self.queues[3])

    def encode(self) -> None:
        while True:
            frame = self.rig.get(self.queues[3])
            if frame is _END:
                return
            start = time.perf_counter_ns()
            for sink in self.sinks:
                sink.write(frame.index, frame.overlay, frame.frame_labels)
            frame.stamps["encode"] = (start, time.perf_counter_ns())
            self.stats.frames_out += 1
            self.stats.record(frame)
            if self.camera.on_frame is not None:
                self.camera.on_frame(frame)
            self.overlays.give(frame.overlay)  # sinks have encoded or copied it
            frame.overlay = None

    def finish(self) -> None:
        """Counts only the source knows, once it is done."""
        source = self.camera.source
        self.stats.corrupt = int(getattr(source, "corrupt_frames", 0))
        self.stats.outages = list(getattr(source, "outages", ()))


class _Rig:
    def __init__(self, cameras: Sequence[Camera], processor: Processor, *, max_batch: int | None, queue_size: int,
                 isolate: bool):
        self.processor = processor
        self.isolate = isolate
        self.stop = threading.Event()
        self.ready = threading.Event()  # set when a frame waits for inference or room frees behind it
        self.op_calls = threading.BoundedSemaphore(OP_CALLS)
        self.errors: list[BaseException] = []
        self.streams = [_Stream(self, camera, queue_size) for camera in cameras]
        self.stats = RigStats({camera.name: stream.stats for camera, stream in zip(cameras, self.streams)})
        self.scheduler = RoundRobin(len(self.streams), max_batch or len(self.streams))
        self._ended = [False] * len(self.streams)

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def wait_until(self, deadline_s: float) -> None:
        while (left := deadline_s - time.perf_counter()) > 0:
            if self.stop.wait(min(left, _POLL_S)):
                raise _Stopped

    def halt(self) -> None:
        """Stop every stage, and every source waiting for a camera to come back (runtime.rig.Feed)."""
        self.stop.set()
        for stream in self.streams:
            cancel = getattr(stream.camera.source, "cancel", None)
            if cancel is not None:
                cancel()

    def _take(self, camera: int):
        """The camera's oldest frame waiting for inference, if its output has room to go."""
        stream = self.streams[camera]
        if self._ended[camera] or stream.queues[2].full():  # only this thread fills queues[2]
            return None
        try:
            return stream.queues[1].get_nowait()
        except queue.Empty:
            return None

    def infer(self) -> None:
        """The one inference of the rig: batches of waiting frames, round robin over the cameras,
        each output handed back to its camera's postprocess."""
        while not all(self._ended):
            if self.stop.is_set():
                raise _Stopped
            self.ready.clear()
            picked = self.scheduler.pick(self._take)
            frames = []
            for camera, item in picked:
                if item is _END:
                    self._ended[camera] = True
                    self.put(self.streams[camera].queues[2], _END)
                else:
                    frames.append((camera, item))
            if not frames:
                if not picked:
                    self.ready.wait(_POLL_S)
                continue
            start = time.perf_counter_ns()
            outputs = self.processor.infer_batch([frame.batch for _, frame in frames])
            end = time.perf_counter_ns()
            self.stats.batches += 1
            self.stats.frames_inferred += len(frames)
            for (camera, frame), output in zip(frames, outputs):
                stream = self.streams[camera]
                stream.batches.give(frame.batch[0])  # engines do not keep their input past infer()
                frame.batch, frame.output = None, output
                frame.stamps["infer"] = (start, end)
                stream.queues[2].put_nowait(frame)

    def _guarded(self, stage: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                stage()
            except _Stopped:
                pass
            except BaseException as exc:  # any failure stops every stage; run() re-raises it
                self.errors.append(exc)
                self.halt()

        return body

    def run(self) -> RigStats:
        stages = [self.infer] + [stage for stream in self.streams for stage in
                                 (stream.decode, stream.preprocess, stream.postprocess, stream.encode)]
        threads = [threading.Thread(target=self._guarded(stage), name=f"pipeline-{stage.__name__}", daemon=True)
                   for stage in stages]
        started = time.perf_counter()
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(_POLL_S)
        except KeyboardInterrupt:
            self.stats.interrupted = True
            self.halt()
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
        self.stats.wall_s = time.perf_counter() - started
        sinks = [sink for stream in self.streams for sink in stream.sinks]
        for stream in self.streams:
            stream.stats.wall_s, stream.stats.interrupted = self.stats.wall_s, self.stats.interrupted
            stream.finish()
        if self.errors:
            abort_sinks(sinks)
            raise self.errors[0]
        close_sinks(sinks)
        return self.stats


def close_sinks(sinks: Iterable) -> None:
    """Finish every sink; if one fails, the rest are aborted and the failure raised."""
    sinks = list(sinks)
    for position, sink in enumerate(sinks):
        try:
            sink.close()
        except BaseException:
            abort_sinks(sinks[position + 1:])
            raise


def abort_sinks(sinks: Iterable) -> None:
    for sink in sinks:
        sink.abort()


def run_rig(cameras: Sequence[Camera], processor: Processor, *, max_batch: int | None = None, queue_size: int = 4,
            isolate: bool | None = None) -> RigStats:
    """Run several cameras through one processor (one engine) into their sinks, which it closes (or aborts).

    Decode, preprocess, postprocess and encode run per camera; one inference thread batches the
    frames waiting across cameras (RoundRobin, at most `max_batch`, default one per camera) and
    hands each output back to its camera. With `isolate` (the default for several cameras) a
    camera whose source raises ends there, the error in its stats, and the others go on; any
    other failure stops the rig, aborts every sink and is re-raised. Ctrl-C stops the stages,
    finishes the sinks with what was written and returns stats with `interrupted` set.
    """
    if not cameras:
        raise ValueError("a rig needs at least one camera")
    names = [camera.name for camera in cameras]
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique, got {names}")
    rig = _Rig(cameras, processor, max_batch=max_batch, queue_size=queue_size,
               isolate=len(cameras) > 1 if isolate is None else isolate)
    return rig.run()


def run_pipeline(source: Iterable[tuple[int, np.ndarray]], processor: Processor, sinks: Sequence = (), *,
                 realtime: bool = False, pace_fps: float | None = None, max_frames: int | None = None,
                 queue_size: int = 4, on_frame: Callable[[Frame], None] | None = None) -> RunStats:
    """Run every frame of `source` through the stages into `sinks`: a rig of one camera.

    `pace_fps` releases frames at that rate, so a file can stand in for a live camera in
    real-time mode. `on_frame` is called from the encode thread with each finished Frame; its
    overlay array is reused for a later frame once the callback returns (copy it to keep it).
    Ctrl-C stops the stages, finishes the sinks with what was written and returns stats with
    `interrupted` set; an exception in any stage aborts the sinks and is re-raised.
    """
    camera = Camera(source, sinks, realtime=realtime, pace_fps=pace_fps, max_frames=max_frames, on_frame=on_frame)
    return run_rig([camera], processor, queue_size=queue_size).cameras[camera.name]
