"""Segment a video, camera, stream or image folder, or a rig of them, with an exported model.

    python runtime/segment.py --model models/export/gen_student.onnx --source dashcam.mp4 --out overlay.mp4
    python runtime/segment.py --model models/export/gen_student.onnx --rig rig.yaml --out runs/ --json rig.json
    python runtime/segment.py --model models/export/gen_student.onnx --source drive.mcap \
        --topic /camera/front/image_raw --topic /camera/rear/image_raw --out-bag results.mcap

Writes an overlay video and/or per-frame label PNGs, shows progress on stderr and prints a
latency summary at the end. Several cameras (--source more than once, or --rig) run in one
process on one engine: --out DIR writes DIR/<camera id>.mp4, --save-labels DIR writes
DIR/<camera id>/, and --json writes one rig summary holding every camera's (runtime/rig.py).
Recorded drives (ROS 1/2 bags, MCAP) are read one camera per --topic, and --out-bag writes the
labels and overlays of every camera as topics of one MCAP file (runtime/bags.py). With --gt-labels it also scores the labels (mIoU), which is how
the `segment_demo` stage checks the deployed model on the synthetic dashcam clip.
Exit codes: 0 done, 2 bad input (one line on stderr, nothing written), 130 Ctrl-C and 143
SIGTERM (a service manager stopping it; either way the output written so far is kept as a
valid file). The model runs through runtime.Segmenter, the API an embedding uses (one code path).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `runtime` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from runtime import files, rig  # noqa: E402
from runtime.api import Segmenter  # noqa: E402
from runtime.bags import BagWriter  # noqa: E402
from runtime.contract import ContractError  # noqa: E402
from runtime.engines import BACKENDS, EngineError  # noqa: E402
from runtime.ops import OpsInputError  # noqa: E402
from runtime.gpu_path import DEVICES  # noqa: E402
from runtime.redact import redact  # noqa: E402
from runtime.pipeline import (GLASS_TO_GLASS, LETTERBOX_MODES, LETTERBOX_TOLERANCE, STAGES, Camera,  # noqa: E402
                              ThreadBudget, abort_sinks, run_rig)
from runtime.scoring import confusion_matrix, iou_per_class, mean_iou  # noqa: E402
from runtime.video import (LabelSink, NullSink, Sink, SinkError, SourceError, VideoSink, existing_kind,  # noqa: E402
                           labels_path, make_output_folder, open_source, temp_file_in, write_failure)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM
# Corrupt files named in the summary table; the JSON lists them all.
SHOWN_CORRUPT_FILES = 5


class GroundTruthError(ValueError):
    """The ground-truth labels cannot be used; the message says which and why."""


# ------------------------------------------------------------------------------ scoring


class GroundTruthScorer(Sink):
    """Accumulates the confusion matrix of the frame labels against `<index:06d>.png` trainIds."""

    needs_labels = True

    def __init__(self, folder: str | os.PathLike, num_classes: int):
        self.folder = Path(folder)
        if existing_kind(self.folder, "ground-truth folder", GroundTruthError) != "folder":
            raise GroundTruthError(f"ground-truth folder {self.folder} does not exist; "
                                   "give the folder of <frame:06d>.png trainId labels")
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.frames_scored = 0
        self.frames_without_truth = 0

    def write(self, index: int, overlay: np.ndarray | None, labels: np.ndarray | None) -> None:
        path = labels_path(self.folder, index)
        if not path.exists():
            self.frames_without_truth += 1
            return
        truth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if truth is None or truth.ndim != 2:
            raise GroundTruthError(f"ground truth {path} is not a single-channel label PNG")
        if truth.shape != labels.shape:
            raise GroundTruthError(f"ground truth {path} is {truth.shape[1]}x{truth.shape[0]} but the frames are "
                                   f"{labels.shape[1]}x{labels.shape[0]}; use the labels of this video")
        self.confusion += confusion_matrix(truth, labels, self.num_classes)
        self.frames_scored += 1

    def report(self, classes) -> dict:
        ious = iou_per_class(self.confusion)
        miou = mean_iou(self.confusion)
        return {
            "miou": None if math.isnan(miou) else miou,
            "per_class_iou": {name: None if math.isnan(v) else float(v) for name, v in zip(classes, ious)},
            "frames_scored": self.frames_scored,
            "frames_without_truth": self.frames_without_truth,
        }


# ------------------------------------------------------------------------------- output


def check_writable(path: Path) -> None:
    """Fail now, before any frame is processed, if `path` could not be written at the end."""
    if existing_kind(path, "stats file", SinkError) == "folder":
        raise SinkError(f"stats file {path}: is a folder; give a file name such as stats.json")
    make_output_folder(path.parent, "stats file", path)
    os.unlink(temp_file_in(path.parent, "stats file", path))


def format_summary(summary: dict) -> str:
    """The end-of-run table: counts, FPS and latency percentiles per stage."""
    def ms(value):
        return f"{value:9.2f}" if value is not None else f"{'-':>9}"

    lines = [
        f"frames in {summary['frames_in']}, out {summary['frames_out']}, dropped {summary['dropped']}, "
        f"corrupt {summary['corrupt']}; {summary['fps']:.2f} FPS over {summary['wall_s']:.2f} s"
        + (" (interrupted)" if summary["interrupted"] else ""),
    ]
    if summary.get("error"):
        lines.append(f"camera failed: {summary['error']}")
    if summary.get("nonfinite_frames"):
        lines.append(f"network output with inf/NaN: {summary['nonfinite_frames']} frames (NaN counted as -inf)")
    for outage in summary.get("outages", []):
        lines.append(f"outage at {outage['start_s']:.2f} s for {outage['length_s']:.2f} s, "
                     f"{outage['frames_lost']} frames lost")
    corrupt_files = summary.get("corrupt_files", [])
    if corrupt_files:
        more = len(corrupt_files) - SHOWN_CORRUPT_FILES
        lines.append("corrupt files skipped: " + ", ".join(corrupt_files[:SHOWN_CORRUPT_FILES])
                     + (f" and {more} more" if more > 0 else ""))
    if "threads" in summary:
        letterbox = summary["letterbox"]
        region = "off" if letterbox["region"] is None else "x".join(map(str, letterbox["region"][2:]))
        lines.append(f"{ThreadBudget(**summary['threads']).describe()}; letterbox {letterbox['mode']}: {region}")
    lines.append(f"{'latency (ms)':<16}{'p50':>9}{'p90':>9}{'p99':>9}")
    for stage in (*STAGES, GLASS_TO_GLASS):
        row = summary["latency_ms"][stage]
        lines.append(f"{stage:<16}{ms(row['p50'])}{ms(row['p90'])}{ms(row['p99'])}")
    if "miou" in summary:
        miou = summary["miou"]
        lines.append(f"mIoU {'-' if miou is None else f'{100 * miou:.2f}'} over {summary['frames_scored']} labelled frames")
    return "\n".join(lines)


def format_rig_summary(summary: dict) -> str:
    """The end-of-run table of a rig: the aggregate, then each camera's table."""
    batch = summary["mean_batch"]
    lines = [f"rig of {len(summary['cameras'])} cameras: frames in {summary['frames_in']}, out "
             f"{summary['frames_out']}, dropped {summary['dropped']}; {summary['fps']:.2f} FPS in aggregate over "
             f"{summary['wall_s']:.2f} s" + (" (interrupted)" if summary["interrupted"] else ""),
             f"{summary['batches']} batches of {'-' if batch is None else f'{batch:.2f}'} frames on average; "
             f"{ThreadBudget(**summary['threads']).describe()} for the whole rig"]
    for camera_id, camera in summary["cameras"].items():
        letterbox = camera["letterbox"]
        region = "off" if letterbox["region"] is None else "x".join(map(str, letterbox["region"][2:]))
        lines += ["", f"camera {camera_id} ({camera['source']}; letterbox {letterbox['mode']}: {region})",
                  format_summary(camera)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported artefact (.onnx, .engine, .ts) with its model contract")
    parser.add_argument("--source", action="append", default=[],
                        help="video file, camera index (0), rtsp:// or http:// URL, "
                        "or a folder of .png/.jpg frames (each segmented at its own size; --out scales "
                        "every frame to the first one's size, --save-labels keeps each frame's size); "
                        "repeat it for a rig of cameras cam0, cam1, ...")
    parser.add_argument("--source-env", action="append", default=[], metavar="NAME",
                        help="a --source taken from environment variable NAME, so a camera URL with its password "
                        "is not on the command line (which every user sees in ps); repeatable, after the --source ones")
    parser.add_argument("--topic", action="append", default=[],
                        help="image topic (sensor_msgs/Image or CompressedImage) of a --source drive: .mcap, ROS 1 "
                        ".bag or ROS 2 bag folder; repeat it for a rig of one camera per topic (default: the drive's "
                        "only image topic)")
    parser.add_argument("--rig", type=Path, metavar="RIG.yaml",
                        help="run the cameras this file names (id, source, out, save_labels, realtime, loop) "
                        "instead of --source; see README.md")
    parser.add_argument("--out", type=Path, help="overlay video to write (.mp4); with several cameras a folder "
                        "that gets <camera id>.mp4 each")
    parser.add_argument("--out-bag", type=Path, metavar="FILE.mcap",
                        help="write every camera's labels (sensor_msgs/Image mono8) and overlay (CompressedImage "
                        "JPEG) to this MCAP file, on topics beside the input's (.../segmentation/labels, "
                        ".../segmentation/overlay) with the input messages' stamps and frame ids")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    parser.add_argument("--device", default="cpu", choices=DEVICES,
                        help="cpu: C ops on the host (default); cuda: the GPU frame path (CUDA ops, and TensorRT "
                        "or ONNX Runtime's CUDA/TensorRT provider on device buffers)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    parser.add_argument("--save-labels", type=Path, metavar="DIR", help="write uint8 trainId PNGs per frame here "
                        "(with several cameras in DIR/<camera id>/)")
    parser.add_argument("--realtime", action="store_true",
                        help="drop the oldest waiting frame instead of falling behind; files play at their frame rate "
                        "(always on for cameras and streams)")
    parser.add_argument("--loop", action="store_true",
                        help="replay file sources from their start when they end (soak runs; stop with Ctrl-C or "
                        "--max-frames)")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop each camera after N frames")
    parser.add_argument("--max-batch", type=int, metavar="N",
                        help="most frames of different cameras inferred together (default: the number of cameras)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write the run summary here (with several cameras the rig's, holding every camera's)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="the engine's intra-op CPU threads (default: the cores --op-threads leaves)")
    parser.add_argument("--op-threads", type=int, metavar="N",
                        help="threads of the C pre/post ops, which run beside inference (default: 1, or the "
                        "cores --threads leaves)")
    parser.add_argument("--letterbox", default="auto", choices=LETTERBOX_MODES,
                        help="fit frames into the network input with their aspect ratio kept, padded with the mean "
                        f"colour (cut off again in the labels); auto: when it is more than {LETTERBOX_TOLERANCE * 100:.0f}%% "
                        "off the input's, else stretch (default: auto)")
    parser.add_argument("--gt-labels", type=Path, metavar="DIR",
                        help="score the labels (mIoU) against <frame:06d>.png trainIds in DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.rig is None) == (not args.source and not args.source_env):
        parser.error("give --source / --source-env (once per camera) or --rig FILE, one of the two")
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    for name in ("max_frames", "max_batch", "threads", "op_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def segment(args: argparse.Namespace) -> int:
    """Run the CLI once; user errors surface as the exceptions `main` turns into exit code 2.

    Inputs and output locations are all checked before the first frame is processed, the
    outputs before the (possibly slow) model load. One camera gives the single-stream summary;
    several give the rig's, which holds each camera's.
    """
    cameras = rig.camera_specs(args)
    if len(cameras) > 1 and args.gt_labels is not None:
        raise rig.RigError("--gt-labels scores one stream; give a single --source to score it")
    if args.json is not None:
        check_writable(args.json)
    with contextlib.ExitStack() as stack:
        feeds = []
        for camera in cameras:
            opener = open_source if camera.topic is None else functools.partial(open_source, topic=camera.topic)
            feeds.append(stack.enter_context(rig.Feed(opener(camera.source), loop=camera.loop, opener=opener)))
        sinks: dict[str, list[Sink]] = {camera.id: [] for camera in cameras}
        try:
            bag = BagWriter(args.out_bag) if args.out_bag is not None else None
            for camera, feed in zip(cameras, feeds):
                if bag is not None:
                    sinks[camera.id].append(bag.sink(camera.id, camera.topic, _headers(feed.source), feed.fps))
                if camera.out is not None:
                    sinks[camera.id].append(VideoSink(camera.out, feed.fps, feed.size))
                if camera.save_labels is not None:
                    sinks[camera.id].append(LabelSink(camera.save_labels))
            with Segmenter(args.model, args.device, args.threads, op_threads=args.op_threads,
                           letterbox=args.letterbox, alpha=args.alpha, backend=args.backend) as segmenter:
                scorer = None
                if args.gt_labels is not None:
                    scorer = GroundTruthScorer(args.gt_labels, segmenter.contract.num_classes)
                    sinks[cameras[0].id].append(scorer)
                processor = segmenter.processor
                stats = _run_with_progress(args, cameras, feeds, processor, sinks)
                per_camera = {camera.id: camera_summary(stats.cameras[camera.id], camera, feed, processor, args)
                              for camera, feed in zip(cameras, feeds)}
                shared = {"model": str(args.model), "engine": segmenter.describe(),
                          "threads": segmenter.threads.summary()}
                if len(cameras) == 1:
                    summary = {**per_camera[cameras[0].id], **shared}
                    if scorer is not None:
                        summary.update(scorer.report(segmenter.contract.classes))
                else:
                    summary = rig_summary(stats, per_camera, shared)
        except BaseException:
            abort_sinks(sink for camera_sinks in sinks.values() for sink in camera_sinks)  # harmless if done
            raise
    print(format_summary(summary) if len(cameras) == 1 else format_rig_summary(summary))
    if args.json is not None:
        try:
            files.write_json(args.json, summary)
        except OSError as exc:
            raise SinkError(f"{write_failure('stats file', args.json, exc)} (the video and labels of this "
                            "run are complete and kept)") from None
    return EXIT_INTERRUPTED if stats.interrupted else 0


def camera_summary(stats, camera: rig.CameraSpec, feed: rig.Feed, processor, args) -> dict:
    """One camera's counts and latencies with what it ran on; a failure and outages where it had them."""
    summary = stats.summary()
    summary.update(source=redact(camera.source), realtime=camera.realtime or feed.is_live,
                   **({"topic": camera.topic} if camera.topic is not None else {}),
                   corrupt_files=feed.corrupt_files,
                   letterbox={"mode": args.letterbox, "region": processor.region(feed.size[::-1])})
    if stats.error is not None:
        summary["error"] = stats.error
    if feed.is_live:
        summary["outages"] = stats.outages
    return summary


def _headers(source):
    """The input headers of a drive's frames (runtime.bags.BagSource.header); none for other sources."""
    return getattr(source, "header", lambda index: None)


def rig_summary(stats, per_camera: dict, shared: dict) -> dict:
    """The rig's aggregate (frames, FPS over the rig's wall time, batching) and every camera's summary."""
    return {
        "frames_in": sum(camera["frames_in"] for camera in per_camera.values()),
        "frames_out": stats.frames_out,
        "dropped": sum(camera["dropped"] for camera in per_camera.values()),
        "corrupt": sum(camera["corrupt"] for camera in per_camera.values()),
        "interrupted": stats.interrupted,
        "wall_s": stats.wall_s,
        "fps": stats.fps,
        "batches": stats.batches,
        "mean_batch": stats.mean_batch,
        **shared,
        "cameras": per_camera,
    }


class NonfiniteWarning:
    """Calls `write` with one warning line at the first frame, of any camera, whose network
    output had inf or NaN: a broken or overflowing engine should be heard of while it runs, and
    once, since the summary counts every such frame."""

    def __init__(self, write):
        self._write = write
        self._lock = threading.Lock()  # every camera's encode thread calls in
        self._warned = False

    def __call__(self, camera_id: str, frame) -> None:
        if not frame.nonfinite or self._warned:
            return
        with self._lock:
            if self._warned:
                return
            self._warned = True
        self._write(f"segment: warning: camera {camera_id}, frame {frame.index}: the network output has inf or "
                    "NaN values (NaN counted as -inf); the summary's nonfinite_frames counts such frames")


def _run_with_progress(args, cameras, feeds, processor, sinks):
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime-only install (pip install '.[runtime]') shows no progress bar
        tqdm = None
    totals = [feed.frame_count for feed in feeds]
    if args.max_frames is not None:
        totals = [args.max_frames if total is None else min(total, args.max_frames) for total in totals]
    total = None if None in totals else sum(totals)

    def streams(warn, advance):
        # A camera cannot wait for us: live sources always run in real-time mode.
        def on_frame(camera_id):
            def finished(frame):
                warn(camera_id, frame)
                advance()
            return finished

        return [Camera(feed, sinks[camera.id] or [NullSink()], name=camera.id,
                       realtime=camera.realtime or feed.is_live,
                       pace_fps=feed.fps if camera.realtime and not feed.is_live else None,
                       max_frames=args.max_frames, on_frame=on_frame(camera.id))
                for camera, feed in zip(cameras, feeds)]

    if tqdm is None:
        warn = NonfiniteWarning(lambda line: print(line, file=sys.stderr, flush=True))
        return run_rig(streams(warn, lambda: None), processor, max_batch=args.max_batch)
    with tqdm(total=total, unit="frame", desc="segment", file=sys.stderr, disable=args.no_progress,
              dynamic_ncols=True) as bar:
        warn = NonfiniteWarning(lambda line: bar.write(line, file=sys.stderr))  # above the bar, not through it
        return run_rig(streams(warn, bar.update), processor, max_batch=args.max_batch)


def main(argv=None) -> int:
    args = parse_args(argv)
    sigterm = []

    def stop(signum, frame):  # a service manager stops us with SIGTERM: end as on Ctrl-C
        sigterm.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = segment(args)
    except (SourceError, SinkError, ContractError, EngineError, GroundTruthError, OpsInputError, rig.RigError) as exc:
        message = redact(" ".join(str(exc).split()))  # one line whatever the library put in it, no password
        print(f"segment: error: {message}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the pipeline started: nothing was written
        print("segment: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_TERMINATED if sigterm and code == EXIT_INTERRUPTED else code


if __name__ == "__main__":
    sys.exit(main())
