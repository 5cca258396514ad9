"""Render every published results table from the metrics files, into the generated blocks of
README.md and docs/ (between `<!-- report:NAME -->` and `<!-- /report:NAME -->`).

    python -m tools.report           # rewrite the blocks from metrics/*.json
    python -m tools.report --check   # exit 1 if a block differs from what the committed metrics say (CI)

No figure in those blocks is typed by hand: a missing metrics file renders as "not measured yet"
with the command that measures it, and a result whose stage's code changed after it ran (its
`dvc.lock` hashes differ from the committed files: tools/lock.py) is marked stale with the
commit that holds it. `--check` reads the metrics, `dvc.lock` and code as committed at HEAD, so
a local run (`make demo` rewrites metrics/) never fails it; the files hold fractions, the tables
show percent.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from runtime import files
from tools.lock import Revision, stale_stages
from training import params
from training.ssl_summary import read_rows

METRICS = Path("metrics")
# Where the metrics are read from: the working tree (rendering), or a commit (--check).
SOURCE = Revision(None)
TARGETS = {"README.md": ("rig", "drive", "ssl_benchmark", "demo", "export"), "docs/ssl_benchmark.md": ("ssl_benchmark", "ssl_signals", "ssl_precision",
                                                                                       "ssl_history"),
           "docs/benchmarks.md": ("latency",)}


def _read(path: Path) -> dict | None:
    data = SOURCE.read(path.as_posix())
    return json.loads(data) if data is not None else None


def _load(name: str) -> dict | None:
    return _read(METRICS / name)


def _listing(folder: Path) -> list[str]:
    """Names of the files in `folder` (sorted), from the same source as _read."""
    if SOURCE.rev is None:
        return sorted(p.name for p in folder.glob("*") if p.is_file())
    return [name for name in SOURCE.files_under(folder.as_posix()) or [] if "/" not in name]


def _points(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}"


def _signed_points(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:+.2f}"


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f} %"


def _figure(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _minutes(row: dict | None) -> str:
    """Summed step time of a row; a row whose first process's steps went untimed says how many were."""
    if row is None or not row.get("iterations_timed"):
        return "-"
    partial = f" ({row['iterations_timed']} of {row['iters']} it)" if row["iterations_timed"] < row["iters"] else ""
    return f"{row['train_seconds'] / 60:.0f}{partial}"


def _timing(row: dict | None) -> str:
    """Median step time with the torch threads the row trained on: rows on fewer threads shared the cores."""
    if row is None or row.get("seconds_per_iteration") is None:
        return "-"
    threads = f" ({row['threads']})" if "threads" in row else ""
    return f"{row['seconds_per_iteration']:.3f}{threads}"


def _delta(value: float | None) -> str:
    return "- (labels)" if value is None else f"{value:.2g}"


_STALE: dict[Revision, dict[str, list[str]]] = {}


def _stale() -> dict[str, list[str]]:
    """Stage -> changed code paths, for SOURCE (computed once per source)."""
    if SOURCE not in _STALE:
        _STALE[SOURCE] = stale_stages(SOURCE)
    return _STALE[SOURCE]


def stale_note(stages: dict[str, str], what: str) -> str:
    """A line naming each of `stages` (stage -> the file holding its result) whose code changed
    after it ran, with the commit that holds its result; '' when all are current."""
    stale = [(stage, result) for stage, result in stages.items() if stage in _stale()]
    if not stale:
        return ""
    paths = sorted({path for stage, _ in stale for path in _stale()[stage]})
    commits = ", ".join(f"{stage.split('@')[-1]} {SOURCE.commit_of(result) or '(uncommitted)'}" for stage, result in stale)
    return (f"**Stale** ({what}): code these ran on has changed since ({', '.join(paths)}). Each figure is the "
            f"one that ran, committed in: {commits}. Bring one up to date with `dvc repro <stage>` "
            "(README, \"Results that stay true\").")


def _not_measured(command: str) -> str:
    return f"Not measured yet: run `{command}`."


ARM_NAMES = {"full": "supervised, every train image labeled (upper bound)", "supervised": "supervised, labeled images only",
             "mean_teacher": "mean teacher", "stpg": "STPG (Gen-Student)", "cpcl": "CPCL (N1)",
             "css": "CSS (EMA teacher)", "lpl": "LPL stage 1 (image-level labels on every image)",
             "lpl_stage2": "LPL stage 2 (retrained on stage 1's pseudo masks; image-level labels on every image)"}


def arm_name(arm: str) -> str:
    base, precision = params.split_arm(arm)
    return ARM_NAMES.get(base, base) + (f", trained in {precision}" if precision else "")


GATE_VERDICT = {True: "passed", False: "not passed", None: "undecided until both arms have every seed"}


def render_ssl_benchmark(summary: dict | None, rows: list[dict], mark_stale: bool = False,
                         superseded: bool = False) -> str:
    if summary is None:
        return _not_measured("make ssl-benchmark")
    seeds = sorted({row["seed"] for row in rows})
    by_arm = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[row["seed"]] = row
    first = next((row for row in rows if row["arm"] != "full"), None)  # a row of the split, not the bound
    lines = []
    if first:
        ssl, train = first["params"]["ssl_benchmark"], first["params"]["train"]
        lines += [f"{first['num_labeled']} labeled / {first['num_unlabeled']} unlabeled synthetic images at "
                  f"{ssl['data']['height']}x{ssl['data']['width']} (1/{ssl['labeled_ratio']}), {ssl['data']['num_val']} val "
                  f"images evaluated whole; {first['params']['model']['backbone']} DeepLabV3+, {train['iters']} iterations, "
                  f"batch {train['batch_size']}, crop {train['crop'][0]}x{train['crop'][1]}, {first['precision']}; "
                  f"every arm starts from a {ssl['warmup_iters']}-iteration supervised warm-up on the labeled images.", ""]
    lines += ["| arm | " + " | ".join(f"mIoU % seed {s}" for s in seeds)
              + " | mean | spread | gain over supervised, per seed | gap recovered | s/iteration (threads), per seed "
                "| training minutes, per seed |",
              "|---|" + "---|" * len(seeds) + "---|---|---|---|---|---|"]
    recovered, paired = summary.get("recovered", {}), summary.get("paired_gain", {})
    row_stages = {f"ssl_run@{row['arm']}-{row['seed']}": f"{params.SSL_ROWS_DIR.as_posix()}/{row['arm']}-{row['seed']}.json"
                  for row in rows} if mark_stale else {}
    mark = lambda arm, seed: "*" if f"ssl_run@{arm}-{seed}" in row_stages and f"ssl_run@{arm}-{seed}" in _stale() else ""  # noqa: E731
    for arm, stats in summary["arms"].items():  # in the order of ssl_benchmark.arms
        per_seed = by_arm.get(arm, {})
        cells = [_points(per_seed[s]["miou"]) + mark(arm, s) if s in per_seed else "-" for s in seeds]
        timings = " / ".join(_timing(per_seed.get(s)) for s in seeds)
        minutes = " / ".join(_minutes(per_seed.get(s)) for s in seeds)
        share = f"{100 * recovered[arm]:.0f} %" if arm in recovered else "-"
        spread = _points(stats["spread"]) if stats["seeds"] > 1 else "-"  # one seed has no spread
        gains = " / ".join(_signed_points(paired[arm].get(str(s))) for s in seeds) if arm in paired else "-"
        lines.append(f"| {arm_name(arm)} | " + " | ".join(cells)
                     + f" | {_points(stats['mean'])} | {spread} | {gains} | {share} | {timings} | {minutes} |")
    gate = summary.get("gate")
    lines.append("")
    if gate:
        lines.append(f"Headroom gate: full-label {_points(gate['full_miou'])} - supervised {_points(gate['sup_miou'])} "
                     f"= {_points(gate['headroom'])} points, seed spread {_points(gate['seed_spread'])}: "
                     f"**{GATE_VERDICT[gate['passed']]}** (needs >= 5 points and >= 3x the spread).")
    if summary.get("missing") and superseded:
        lines.append(f"Never run: {', '.join(summary['missing'])} (the protocol was superseded first; "
                     "`make ssl-benchmark` runs the current one).")
    elif summary.get("missing"):
        lines.append(f"Rows still to run: {', '.join(summary['missing'])} (`make ssl-benchmark` resumes).")
    note = stale_note(row_stages, "rows marked *") if mark_stale else ""
    if note:
        lines += ["", note]
    return "\n".join(lines)


COMMON_LOSSES = ("loss", "sup", "lr")  # every row logs these; the rest are the method's own signals


def render_ssl_signals(rows: list[dict]) -> str:
    """Each semi-supervised row's own logged signals (its losses, selected or agreeing share, weights)
    at its last logged iteration: one iteration, so noisy, but it shows a term that never acts. LPL's
    stage 2 rows add the mIoU of the pseudo masks they learned from."""
    own = [(row, {**{k: v for k, v in row.get("final_losses", {}).items() if k not in COMMON_LOSSES},
                  **({"pseudo_mask_miou": row["pseudo_mask_miou"]} if "pseudo_mask_miou" in row else {})}) for row in rows]
    own = [(row, signals) for row, signals in own if signals]
    if not own:
        return _not_measured("make ssl-benchmark")
    lines = ["| row | the method's own signals at its last logged iteration |", "|---|---|"]
    for row, signals in own:
        lines.append(f"| {row['arm']}-{row['seed']} | " + ", ".join(f"{k} {v:.3g}" for k, v in signals.items()) + " |")
    return "\n".join(lines)


def render_demo(evaluations: dict[str, dict | None]) -> str:
    if not any(evaluations.values()):
        return _not_measured("make demo")
    lines = ["| model | val mIoU % | pixel accuracy % | dashcam clip mIoU % (fp32 / int8 ONNX) |", "|---|---|---|---|"]
    clip = _load("demo.json") or {}
    for (name, result), stage in zip(evaluations.items(), ("evaluate", "evaluate_baseline")):
        star = "*" if stage in _stale() else ""
        on_clip = " / ".join(_points(clip[p]["miou"]) for p in ("fp32", "int8")) if clip and stage == "evaluate" else "-"
        lines.append(f"| {name} | {_points(result['miou']) + star if result else '-'} "
                     f"| {_points(result['pixel_acc']) + star if result else '-'} | {on_clip} |")
    note = stale_note({"evaluate": "metrics/eval.json", "evaluate_baseline": "metrics/eval_baseline.json",
                       "segment_demo": "metrics/demo.json"}, "figures marked *")
    return "\n".join(lines + (["", note] if note else []))


def render_export(export: dict | None) -> str:
    if export is None:
        return _not_measured("make demo")
    lines = [f"{export['verify_images']} val images through the runtime's engines, "
             f"{export['input_size'][0]}x{export['input_size'][1]} input; TensorRT: {export['tensorrt']['status']}.", "",
             "| artefact | size MB | mIoU % | PyTorch mIoU % | delta points | label agreement | max abs logit delta |",
             "|---|---|---|---|---|---|---|"]
    for name, report in export["artefacts"].items():
        lines.append(f"| {name} | {report['size_bytes'] / 1e6:.1f} | {_points(report['miou'])} "
                     f"| {_points(report['miou_torch'])} | {report['miou_delta_points']:+.2f} "
                     f"| {report['label_agreement']:.4f} | {_delta(report['max_abs_logit_delta'])} |")
    note = stale_note({"export": "metrics/export.json"}, "the whole table")
    return "\n".join(lines + (["", note] if note else []))


def render_latency(benchmark: dict | None) -> str:
    if benchmark is None:
        return _not_measured("dvc repro benchmark")
    from bench.report import render_markdown

    text = re.sub(r"^# .*\n\n", "", render_markdown(benchmark)).replace("\n## ", "\n### ").removeprefix("## ")
    note = stale_note({"benchmark": "metrics/benchmark.json"}, "every table above")
    return text + (f"\n\n{note}" if note else "")


def render_rig(benchmark: dict | None) -> str:
    """The rig and soak levels of the benchmark stage (the rest of it: docs/benchmarks.md)."""
    if not benchmark or not {"rig", "soak"} & set(benchmark):
        return _not_measured("dvc repro benchmark")
    from bench.report import rig_markdown, soak_markdown

    lines = rig_markdown(benchmark) if "rig" in benchmark else []
    lines += soak_markdown(benchmark) if "soak" in benchmark else []
    text = "\n".join(lines).replace("## ", "#### ").rstrip("\n")
    note = stale_note({"benchmark": "metrics/benchmark.json"}, "both tables")
    return text + (f"\n\n{note}" if note else "")


def render_drive(benchmark: dict | None) -> str:
    """The drive level of the benchmark stage: a recorded MCAP drive against the same frames from the video."""
    if not benchmark or "drive" not in benchmark:
        return _not_measured("dvc repro benchmark")
    from bench.report import drive_markdown

    text = "\n".join(drive_markdown(benchmark)).replace("## ", "#### ").rstrip("\n")
    note = stale_note({"benchmark": "metrics/benchmark.json"}, "the table")
    return text + (f"\n\n{note}" if note else "")


def _rows(folder: Path) -> list[dict]:
    return read_rows(_listing(folder), lambda name: _read(folder / name))


def render_history() -> str:
    """Superseded protocols (metrics/ssl_history/<name>/: their rows and summary), newest name last."""
    history = METRICS / "ssl_history"
    names = SOURCE.files_under(history.as_posix()) if SOURCE.rev is not None else \
        [p.relative_to(history).as_posix() for p in history.glob("*/summary.json")]
    folders = sorted(history / name.split("/")[0] for name in names or [] if name.endswith("/summary.json"))
    if not folders:
        return "No superseded protocol."
    parts = []
    for folder in folders:
        summary = _read(folder / "summary.json")
        parts += [f"#### `{folder.relative_to(METRICS.parent).as_posix()}`", "",
                  render_ssl_benchmark(summary, _rows(folder), superseded=True), ""]
    return "\n".join(parts)


def render_precision(probes: list[dict]) -> str:
    """bf16 against fp32 on trained rows (training.precision_probe)."""
    if not probes:
        return _not_measured("python -m training.precision_probe --arm stpg --seed 1")
    lines = ["| row | trained in | val mIoU fp32 | val mIoU bf16 | teacher | labels that differ | "
             "confident pixels (fp32) | confident labels that differ |", "|---|---|---|---|---|---|---|---|"]
    for probe in probes:
        row = f"{probe['arm']}-{probe['seed']}"
        fp32, bf16 = (_figure(100 * probe["val_miou"][p], "{:.3f}") for p in ("fp32", "bf16"))
        head = f"| {row} | {probe['trained_in']} | {fp32} | {bf16} |"
        for teacher in probe["teachers"] or [{"teacher": "-", "differ": None, "confident": None, "differ_confident": None}]:
            lines.append(f"{head} {teacher['teacher']} | {_percent(teacher['differ'])} | {_percent(teacher['confident'])} | "
                         f"{_percent(teacher['differ_confident'])} |")
    first = probes[0]
    lines += ["", f"Teachers label the first {first['unlabeled_images']} unlabeled images in both precisions (eval mode); "
              f"a confident pixel has fp32 confidence >= {first['confident_threshold']}."]
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    rows = _rows(METRICS / "ssl")
    return {
        "ssl_benchmark": render_ssl_benchmark(_load("ssl_benchmark.json"), rows, mark_stale=True),
        "ssl_signals": render_ssl_signals(rows),
        "ssl_history": render_history(),
        "ssl_precision": render_precision(_rows(METRICS / "ssl_precision")),
        "demo": render_demo({"STPG Gen-Student (`models/gen_student.pt`)": _load("eval.json"),
                             "supervised baseline (`models/baseline.pt`)": _load("eval_baseline.json")}),
        "export": render_export(_load("export.json")),
        "latency": render_latency(_load("benchmark.json")),
        "rig": render_rig(_load("benchmark.json")),
        "drive": render_drive(_load("benchmark.json")),
    }


def fill(text: str, name: str, body: str, path: str) -> str:
    pattern = re.compile(rf"(<!-- report:{name} -->\n).*?(<!-- /report:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {path} has no <!-- report:{name} --> block; add the two marker lines")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def demo_summary() -> str:
    """What `make demo` leaves behind (this run's files, not the committed ones), and what to try next."""
    lines = ["", "make demo finished. What you got (README, \"After make demo\", says what each figure means):", ""]
    for name, path in (("STPG Gen-Student, models/gen_student.pt", "eval.json"),
                       ("supervised baseline, models/baseline.pt", "eval_baseline.json")):
        result = _load(path)
        lines.append(f"  {name}: val mIoU {_percent(result['miou']) if result else 'not evaluated'}")
    export = _load("export.json")
    if export:
        for key, art in export["artefacts"].items():
            lines.append(f"  {art['path']}: val mIoU {_percent(art['miou'])} ({art['miou_delta_points']:+.2f} points vs PyTorch)")
    clip = _load("demo.json")
    if clip:
        for precision, run in clip.items():
            lines.append(f"  {precision} artefact on the demo clip: mIoU {_percent(run['miou'])}, {run['fps']:.1f} FPS, "
                         f"p99 glass to glass {run['p99_ms']:.0f} ms")
    for what, path in (("overlay video (fp32)", "outputs/demo_overlay.mp4"),
                       ("overlay video (int8)", "outputs/demo_overlay_int8.mp4"),
                       ("latency plot", "outputs/benchmark.png"), ("latency tables", "outputs/benchmark_latest.md")):
        lines.append(f"  {what}: {path}{'' if Path(path).exists() else ' (missing)'}")
    lines += ["", "Next:", "  dvc metrics show                 # the headline figures of this run",
              "  dvc plots show                   # training curves, per-class IoU, latency (dvc_plots/index.html)",
              "  python runtime/segment.py --model models/export/gen_student.onnx --source YOUR_VIDEO.mp4 --out overlay.mp4",
              "  make ssl-benchmark               # the semi-supervised benchmark (hours; resumable)",
              "  git diff metrics/                # this machine's figures against the committed ones"]
    return "\n".join(lines)


def committed() -> Revision:
    """HEAD, or the working tree where there is no commit (an unpacked archive)."""
    head = Revision("HEAD")
    try:
        head._git("rev-parse", "--verify", "-q", "HEAD")
        return head
    except Exception:  # no git, or no commit yet
        return Revision(None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 where a block differs from the metrics")
    parser.add_argument("--demo-summary", action="store_true", help="print what `make demo` produced and exit")
    args = parser.parse_args(argv)
    if args.demo_summary:
        print(demo_summary())
        return 0
    global SOURCE
    working_tree, SOURCE = SOURCE, committed() if args.check else SOURCE
    try:
        rendered = blocks()
    finally:
        SOURCE = working_tree
    stale = []
    for path, names in TARGETS.items():
        text = Path(path).read_text()
        new = text
        for name in names:
            new = fill(new, name, rendered[name], path)
        if new != text:
            stale.append(path)
            if not args.check:
                files.write_text(path, new)
    if args.check and stale:
        print(f"error: {', '.join(stale)} differ from the committed metrics/ and dvc.lock; run "
              "`python -m tools.report` and commit the metrics with the tables", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'rendered'}: {', '.join(TARGETS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
