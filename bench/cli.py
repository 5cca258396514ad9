"""Latency benchmarks of the runtime at three levels, implementations side by side in one run.

    python -m bench --model models/export/gen_student.onnx \
        --model models/export/gen_student_int8.onnx --video data/prepared/synthetic/video/dashcam.mp4 \
        --json metrics/benchmark.json --csv-dir plots/benchmark --markdown docs/benchmark_latest.md

Levels `model`, `ops`, `e2e` (the default) and `rig`, `soak`, `drive` are described in bench.measure; the
results go to bench.report.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path

from bench.measure import (DEFAULT_LEVELS, DEFAULT_MODELS, DEFAULT_VIDEO, EXIT_BAD_INPUT, LEVELS, NAMED_RESOLUTIONS,
                           BenchmarkError, bench_drive, bench_e2e, bench_models, bench_ops, bench_rig, bench_rig_realtime, bench_soak,
                           describe_machine, model_names)
from bench.report import check_output, compare, csv_text, format_compare, load_results, render_markdown, write_plot
from runtime import ops
from runtime.api import THREADED_BACKENDS
from runtime.contract import PRECISIONS, ContractError
from runtime.engines import BACKEND_BY_SUFFIX, EngineError, input_spec, open_engine
from runtime.files import write_text
from runtime.ops import reference
from runtime.pipeline import thread_budget
from runtime.redact import redact
from runtime.video import SinkError, SourceError


def parse_resolution(text: str) -> tuple[str, tuple[int, int]]:
    if text in NAMED_RESOLUTIONS:
        return text, NAMED_RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise BenchmarkError(f"--resolutions: {text!r} is neither {', '.join(NAMED_RESOLUTIONS)} "
                             "nor WIDTHxHEIGHT such as 1280x720")
    return text, (int(match[1]), int(match[2]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", metavar="PATH",
                        help=f"artefact to time (repeatable; default: every {DEFAULT_MODELS}/*.onnx)")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file or image folder for the e2e level")
    parser.add_argument("--demo", type=Path, metavar="DEMO.json",
                        help="take the e2e clip from the demo record `prepare` writes (data/prepared/demo.json: the "
                        "synthetic video, or a dataset's val images), instead of --video")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(DEFAULT_LEVELS),
                        help=f"default: {' '.join(DEFAULT_LEVELS)}")
    parser.add_argument("--warmup", type=int, default=5, metavar="N")
    parser.add_argument("--iters", type=int, default=30, metavar="N")
    parser.add_argument("--frames", type=int, default=120, metavar="N", help="frames per e2e mode")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="ONNX Runtime intra-op threads (default: the cores --op-threads leaves)")
    parser.add_argument("--op-threads", type=int, metavar="N",
                        help="threads of the C ops (default: 1, or the cores --threads leaves)")
    parser.add_argument("--e2e-precisions", nargs="+", default=["fp32", "int8"], choices=PRECISIONS,
                        help="artefacts of these precisions run the e2e level (default: fp32 int8)")
    parser.add_argument("--rig-cameras", type=int, nargs="+", default=[1, 2, 4], metavar="N",
                        help="rig level: camera counts, each one rig process against N segment.py processes")
    parser.add_argument("--rig-frames", type=int, default=240, metavar="N", help="rig level: frames per camera")
    parser.add_argument("--rig-precision", default="int8", choices=PRECISIONS,
                        help="rig, soak and drive levels run the artefact of this precision (else the first one)")
    parser.add_argument("--drive-frames", type=int, default=240, metavar="N",
                        help="drive level: frames of the video recorded on each of the drive's two topics")
    parser.add_argument("--soak-frames", type=int, default=2000, metavar="N",
                        help="soak level: frames of the looped video (the documented long run is 20000)")
    parser.add_argument("--soak-window", type=int, default=1000, metavar="N",
                        help="soak level: frames per window of memory, descriptors and p99")
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
    for name, minimum in (("warmup", 0), ("iters", 1), ("frames", 1), ("threads", 1), ("op_threads", 1),
                          ("classes", 1), ("rig_frames", 1), ("soak_frames", 1), ("soak_window", 1),
                          ("drive_frames", 1)):
        value = getattr(args, name)
        if value is not None and value < minimum:
            parser.error(f"--{name} must be >= {minimum}, got {value}")
    if min(args.rig_cameras) < 1:
        parser.error(f"--rig-cameras must be >= 1, got {min(args.rig_cameras)}")
    if args.soak_frames < args.soak_window:
        parser.error(f"--soak-frames ({args.soak_frames}) must be at least one --soak-window ({args.soak_window})")
    if min(args.input_size) < 4:
        parser.error(f"--input-size must be at least 4 4 (stride-4 logits), got {args.input_size}")
    if args.classes > reference.MAX_CLASSES:
        parser.error(f"--classes must be <= {reference.MAX_CLASSES} (uint8 labels), got {args.classes}")
    return args


def demo_source(path: Path) -> str:
    """The clip named by the demo record of `prepare`."""
    try:
        return str(json.loads(path.read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BenchmarkError(f"demo record {path} is missing or damaged; run `dvc repro prepare` or pass --video") from None


def resolve_models(args) -> list[Path]:
    """The artefacts to time; with the ops level alone, the first one (if any) as its load."""
    needed = {"model", "e2e", "rig", "soak", "drive"} & set(args.levels)
    models = args.model or sorted(DEFAULT_MODELS.glob("*.onnx"))
    if not needed:
        models = models[:1]
    elif not models:
        raise BenchmarkError(f"no model to time: {DEFAULT_MODELS} holds no .onnx; run `dvc repro export` "
                             "or pass --model PATH")
    for path in models:
        if not path.is_file():
            raise BenchmarkError(f"model {path}: no such file; run `dvc repro export` or fix --model")
        if path.suffix not in BACKEND_BY_SUFFIX:
            raise BenchmarkError(f"model {path}: unknown artefact type; use one of {', '.join(BACKEND_BY_SUFFIX)}")
    return models


def e2e_models(engines: dict, precisions: list[str]) -> list[str]:
    """The engines whose artefact has one of `precisions`; the first engine if none has."""
    chosen = [name for name, engine in engines.items() if engine.contract.precision in precisions]
    return chosen or list(engines)[:1]


def benchmark(args) -> dict:
    """Run the chosen levels and write the outputs; user errors raise BenchmarkError & co."""
    models = resolve_models(args)
    if args.demo is not None:
        args.video = demo_source(args.demo)
    if {"e2e", "rig", "soak", "drive"} & set(args.levels) and not Path(args.video).exists():
        raise BenchmarkError(f"video {redact(args.video)}: no such file or folder; run `dvc repro prepare` or fix "
                             "--video")
    resolutions = [parse_resolution(text) for text in args.resolutions]
    old = load_results(args.compare) if args.compare else None
    for path, what in ((args.json, "--json"), (args.markdown, "--markdown"), (args.plot, "--plot")):
        if path is not None:
            check_output(path, what)
    if args.csv_dir is not None:
        check_output(args.csv_dir / "model.csv", "--csv-dir")
    budget = thread_budget(args.threads, args.op_threads)
    ops.set_num_threads(budget.ops)

    results: dict = {}
    series: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        engines = {}
        for name, path in zip(model_names(models), models):
            backend = BACKEND_BY_SUFFIX[path.suffix]
            extra = {"threads": budget.inference} if backend in THREADED_BACKENDS else {}
            engines[name] = stack.enter_context(open_engine(path, **extra))
        load = next(iter(engines), None)
        if "model" in args.levels:
            results["model"], series["model"] = bench_models(engines, args.warmup, args.iters)
        if "ops" in args.levels:
            results["ops"], series["ops"] = bench_ops(resolutions, tuple(args.input_size), args.classes,
                                                      args.warmup, args.iters, engines.get(load))
        e2e_names = e2e_models(engines, args.e2e_precisions) if "e2e" in args.levels else []
        if e2e_names:
            results["e2e"], series["e2e"] = {}, {}
        for name in e2e_names:
            model_fps = results.get("model", {}).get(name, {}).get("fps")
            results["e2e"][name], samples = bench_e2e(engines[name], args.video, args.frames, args.encode, model_fps)
            series["e2e"].update({f"{name}/{key}": values for key, values in samples.items()})
        rig_name = e2e_models(engines, [args.rig_precision])[0] if {"rig", "soak", "drive"} & set(args.levels) \
            else None
        thread_args = [item for flag, value in (("--threads", args.threads), ("--op-threads", args.op_threads))
                       if value is not None for item in (flag, str(value))]
        rig_model = dict(zip(engines, models)).get(rig_name)
        if "rig" in args.levels:
            results["rig"] = bench_rig(rig_model, str(args.video), args.rig_cameras, args.rig_frames, args.encode,
                                       thread_args)
            results["rig_realtime"] = bench_rig_realtime(rig_model, str(args.video), max(args.rig_cameras),
                                                         args.rig_frames, args.encode, thread_args)
        if "drive" in args.levels:
            results["drive"] = bench_drive(rig_model, str(args.video), args.drive_frames, thread_args)
        if "soak" in args.levels:
            results["soak"] = bench_soak(engines[rig_name], str(args.video), args.soak_frames, args.soak_window,
                                         args.encode)
        results["engines"] = {name: {**engine.describe(), "artefact": str(path),
                                     "input": "x".join(map(str, input_spec(engine.contract)[1]))}
                              for (name, engine), path in zip(engines.items(), models)}
    results["threads"] = {"ops": ops.get_num_threads(), "ops_backend": ops.BACKEND, "inference": budget.inference,
                          "cores": budget.cores}
    results["config"] = {"levels": list(args.levels), "warmup": args.warmup, "iters": args.iters,
                         "frames": args.frames, "input_size": list(args.input_size), "classes": args.classes,
                         "resolutions": [label for label, _ in resolutions], "video": redact(args.video),
                         "e2e_models": e2e_names, "ops_load_model": load if "ops" in args.levels else None,
                         "rig_model": rig_name, "rig_cameras": args.rig_cameras, "rig_frames": args.rig_frames,
                         "soak_frames": args.soak_frames, "soak_window": args.soak_window, "encode": args.encode,
                         "drive_frames": args.drive_frames}
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
        print(f"benchmark: error: {redact(' '.join(str(exc).split()))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
