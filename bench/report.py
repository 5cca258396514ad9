"""Benchmark outputs: markdown tables, CSV samples, box plots, JSON, and comparing two runs."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bench.measure import BenchmarkError, HIGHER_IS_BETTER
from runtime.files import atomic_output, create_temp
from runtime.pipeline import GLASS_TO_GLASS, STAGES

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
        f"- ops backend {results['threads']['ops_backend']}, {results['threads']['ops']} op threads beside "
        f"{results['threads']['inference']} inference threads on {results['threads']['cores']} cores; "
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
        lines += _ops_markdown(results)
    for name, e2e in results.get("e2e", {}).items():
        lines += [f"## End to end ({name}, {results['config']['video']})", ""]
        modes = [mode for mode in e2e if isinstance(e2e[mode], dict)]
        for mode in modes:
            record = e2e[mode]
            codec = f" into {record['codec']}" if "codec" in record else ""
            ratio = f", {record['ratio_to_model']:.2f}x the model-only FPS" if "ratio_to_model" in record else ""
            lines.append(f"- {mode}{codec}: {record['fps']:.2f} FPS{ratio}, {record['frames']} frames, "
                         f"{record['dropped']} dropped")
        lines += ["", "| mode | stage | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
        for mode in modes:
            for stage in (*STAGES, GLASS_TO_GLASS):
                row = e2e[mode][stage]
                lines.append(f"| {mode} | {stage} | {_ms(row['p50_ms'])} | {_ms(row['p90_ms'])} | {_ms(row['p99_ms'])} |")
        lines.append("")
    if "rig" in results:
        lines += rig_markdown(results)
    if "soak" in results:
        lines += soak_markdown(results)
    if "drive" in results:
        lines += drive_markdown(results)
    return "\n".join(lines)


def rig_markdown(results: dict) -> list[str]:
    config = results["config"]
    lines = [f"## Rig ({config['rig_model']}, {config['video']}, {config['rig_frames']} frames per camera"
             f"{', offline into H.264' if config.get('encode') else ', offline'})", "",
             "One segment.py process running N copies of the video as a rig against N segment.py processes "
             "started together on the same cores. Aggregate FPS is every camera's frames over the longest "
             "run; resident memory is the peak, summed over the processes.", "",
             "| cameras | run | processes | aggregate FPS | slowest camera FPS | worst p99 glass to glass ms "
             "| resident MB | rig / separate |",
             "|---|---|---|---|---|---|---|---|"]
    for count, record in results["rig"].items():
        for run in ("rig", "separate"):
            row = record[run]
            ratio = (f"{_ratio(record['fps_ratio'])} FPS, {_ratio(record['rss_ratio'])} memory" if run == "rig"
                     else "-")
            lines.append(f"| {count} | {run} | {row['processes']} | {_ms(row['fps'])} | {_ms(min(row['camera_fps']))} "
                         f"| {_ms(row['worst_p99_glass_to_glass_ms'])} | {row['rss_mb']:.0f} | {ratio} |")
    lines.append("")
    live = results.get("rig_realtime")
    if live:
        spread = "-" if live["fps_spread"] is None else f"{100 * live['fps_spread']:.1f} %"
        lines += [f"Real time ({live['cameras']} cameras, each paced at the video's frame rate, oldest frame dropped): "
                  f"delivered FPS per camera {', '.join(_ms(fps) for fps in live['camera_fps'])} (fastest over slowest "
                  f"+{spread}), dropped {', '.join(map(str, live['dropped']))}; worst p99 glass to glass "
                  f"{_ms(live['worst_p99_glass_to_glass_ms'])} ms, {_ratio(live['p99_over_infer'])} one inference's p50 "
                  f"({_ms(live['infer_p50_ms'])} ms).", ""]
    return lines


def drive_markdown(results: dict) -> list[str]:
    drive, config = results["drive"], results["config"]
    lines = [f"## Recorded drive ({config['rig_model']}, {config['video']}, {drive['frames']} frames per camera)", "",
             f"The frames as an MCAP drive of {len(drive['topics'])} JPEG topics, segmented into an output bag (labels "
             "and JPEG overlays per camera), against the same frames read from the video, once per camera, into H.264 "
             "overlay videos; one segment.py process each, aggregate FPS over both cameras.", "",
             "| input | output | aggregate FPS | slowest camera FPS | worst p99 glass to glass ms | resident MB |",
             "|---|---|---|---|---|---|"]
    for name, output in (("mp4", "H.264 overlays"), ("drive", "output bag")):
        row = drive[name]
        lines.append(f"| {'video' if name == 'mp4' else 'MCAP drive'} | {output} | {_ms(row['fps'])} "
                     f"| {_ms(min(row['camera_fps']))} | {_ms(row['worst_p99_glass_to_glass_ms'])} | {row['rss_mb']:.0f} |")
    lines += ["", f"Drive / video: {_ratio(drive['fps_ratio'])} the FPS.", ""]
    return lines


def soak_markdown(results: dict) -> list[str]:
    soak, config = results["soak"], results["config"]
    lines = [f"## Soak ({config['rig_model']}, {config['video']} looped for {soak['frames']} frames, "
             f"{soak['fps']:.2f} FPS)", "",
             f"Per window of {soak['window']} frames. Resident memory at the end / the first window: "
             f"{_ratio(soak['rss_ratio'])}; file descriptors opened since the first window: "
             f"{'-' if soak['fds_added'] is None else soak['fds_added']}; highest window p99 / the first's: "
             f"{_ratio(soak['p99_ratio'])}.", "",
             "| frames | resident MB | open file descriptors | p99 glass to glass ms |", "|---|---|---|---|"]
    for window in soak["windows"]:
        rss = "-" if window["rss_mb"] is None else f"{window['rss_mb']:.1f}"
        lines.append(f"| {window['frames']} | {rss} | {'-' if window['fds'] is None else window['fds']} "
                     f"| {_ms(window['p99_ms'])} |")
    lines.append("")
    return lines


def _ops_markdown(results: dict) -> list[str]:
    in_h, in_w = results["config"]["input_size"]
    load = results["config"].get("ops_load_model")
    threads = results["threads"]
    loaded = (f"Loaded: the same calls while {load} infers back to back in another thread "
              f"({threads['inference']} intra-op threads beside {threads['ops']} op threads), as in the "
              "pipeline; loaded / idle is the ratio of the p50s." if load else
              "No model was given, so nothing was timed under load (pass --model).")
    lines = [f"## Ops (network input {in_h}x{in_w}, {results['config']['classes']} classes)", "",
             "Speed-ups are p50 ratios; bandwidth is bytes read + written / p50, next to a memcpy "
             "moving the same bytes. The C preprocess and blend write into a reused buffer, as the "
             "pipeline calls them; the OpenCV and NumPy chains allocate their results. upsample_argmax "
             "gets smooth random class fields (bench.measure.scene_logits); `shortcut` is the lossy "
             "low-resolution argmax + nearest resize. " + loaded, "",
             "| op | frame | impl | p50 ms | p90 ms | p99 ms | GB/s | % of memcpy | loaded p50 ms | loaded / idle "
             "| vs OpenCV | vs NumPy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for op, per_impl in results["ops"].items():
        for label in per_impl["memcpy"]:
            opencv_p50 = per_impl["opencv"][label]["p50_ms"]
            numpy_p50 = per_impl["numpy"][label]["p50_ms"]
            for impl, per_res in per_impl.items():
                if impl == "speedup":
                    continue
                record = per_res[label]
                fraction = record.get("fraction_of_memcpy")
                under_load = record.get("loaded", {}).get("p50_ms")
                vs = ("-", "-") if impl == "memcpy" else (_ratio(opencv_p50 / record["p50_ms"]),
                                                         _ratio(numpy_p50 / record["p50_ms"]))
                lines.append(f"| {op} | {label} | {impl} | {_ms(record['p50_ms'])} | {_ms(record['p90_ms'])} "
                             f"| {_ms(record['p99_ms'])} | {_ms(record['gbps'])} "
                             f"| {'-' if fraction is None else f'{100 * fraction:.0f}%'} | {_ms(under_load)} "
                             f"| {_ratio(record.get('load_ratio'))} | {vs[0]} | {vs[1]} |")
    lines.append("")
    return lines


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
        create_temp(folder).unlink()
    except OSError as exc:
        raise BenchmarkError(f"{what} {path}: cannot write in {folder} ({exc.strerror}); "
                             "choose a writable location") from None


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
    with atomic_output(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    plt.close(figure)
    return True

