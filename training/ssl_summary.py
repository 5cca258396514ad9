"""DVC stage `ssl_aggregate`: the finished rows of the semi-supervised benchmark -> metrics/ssl_benchmark.json,
and the few figures `dvc metrics show` lists -> metrics/ssl_headline.json.

Kept apart from training.ssl_benchmark so a change here never re-runs a training row.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Callable, Iterable

from runtime import files
from training import cli, params

SUMMARY = Path("metrics/ssl_benchmark.json")
HEADLINE = Path("metrics/ssl_headline.json")
HEADLINE_ARM = "stpg"  # the method the project is built on
GATE_POINTS = 0.05  # full-label must beat 1/n supervised by 5 mIoU points ...
GATE_SPREADS = 3  # ... and by 3x the larger spread between two seeds


ROW_FILE = re.compile(r".+-.+\.json")  # <arm>-<seed>.json


def read_rows(names: Iterable[str], read: Callable[[str], dict | None]) -> list[dict]:
    """The benchmark rows among the file `names` of one folder, read by `read(name)`, in name order:
    the one reader of rows for the aggregate stage, a superseded protocol's archive and tools.report
    (which reads a commit as well as the working tree)."""
    return [read(name) for name in sorted(names) if ROW_FILE.fullmatch(name)]


def rows_in(folder: Path) -> list[dict]:
    """The rows kept in `folder` of the working tree."""
    return read_rows((p.name for p in folder.glob("*") if p.is_file()), lambda name: json.loads((folder / name).read_text()))


def summarise(rows: list[dict], arms: list[str], seeds: list[int]) -> dict:
    """Mean and spread (max - min over seeds) per arm, the headroom gate, each arm's gain over
    supervised training of the same seed, and the share of the full-minus-supervised gap each
    semi-supervised arm recovers. mIoU stays a fraction."""
    by_arm = {arm: {row["seed"]: row["miou"] for row in rows if row["arm"] == arm} for arm in arms}
    arms_summary = {arm: {"mean": round(statistics.fmean(v.values()), 6), "spread": round(max(v.values()) - min(v.values()), 6),
                          "seeds": len(v)} for arm, v in by_arm.items() if v}
    summary = {
        "rows": [{"arm": r["arm"], "method": r["method"], "seed": r["seed"], "miou": r["miou"],
                  "seconds_per_iteration": r.get("seconds_per_iteration")} for r in rows],
        "arms": arms_summary,
        "missing": [f"{arm}-{seed}" for arm in arms for seed in seeds if seed not in by_arm[arm]],
    }
    # a seed's rows share its warm-up backbone, so the gain over supervised training of the same
    # seed leaves the warm-up's luck out of the comparison
    baseline = by_arm.get(params.BASELINE_ARM, {})
    paired = {arm: {seed: miou - baseline[seed] for seed, miou in sorted(v.items()) if seed in baseline}
              for arm, v in by_arm.items() if arm != params.BASELINE_ARM and set(v) & set(baseline)}
    summary["paired_gain"] = {arm: {str(seed): round(gain, 6) for seed, gain in gains.items()}
                              for arm, gains in paired.items()}
    full, sup = arms_summary.get(params.FULL_ARM), arms_summary.get(params.BASELINE_ARM)
    if full and sup:
        headroom = full["mean"] - sup["mean"]
        spread = max(full["spread"], sup["spread"])
        summary["gate"] = {"full_miou": full["mean"], "sup_miou": sup["mean"], "headroom": round(headroom, 6),
                           "seed_spread": spread,
                           # undecided (None) until both arms have every seed: one seed has no spread
                           "passed": (headroom >= GATE_POINTS and headroom >= GATE_SPREADS * spread)
                           if full["seeds"] == sup["seeds"] == len(seeds) else None}
        if headroom > 0:
            # the mean paired gain: with every seed it is mean_arm - mean_supervised; with some, it
            # compares those seeds with the same seeds of supervised training
            summary["recovered"] = {arm: round(statistics.fmean(gains.values()) / headroom, 4)
                                    for arm, gains in paired.items() if arm != params.FULL_ARM}
    return summary


def headline(summary: dict) -> dict:
    """STPG's mean mIoU, mean paired gain over supervised training and share of the gap recovered,
    beside the gap itself (fractions, like every metrics file; None while a row is missing)."""
    gains = summary["paired_gain"].get(HEADLINE_ARM, {})
    return {HEADLINE_ARM: {"miou": summary["arms"].get(HEADLINE_ARM, {}).get("mean"),
                           "gain": round(statistics.fmean(gains.values()), 6) if gains else None,
                           "gap_recovered": summary.get("recovered", {}).get(HEADLINE_ARM)},
            "headroom": summary.get("gate", {}).get("headroom")}


def aggregate(params_path: str = "params.yaml") -> dict:
    ssl = params.load("ssl_benchmark", params_path)
    rows = sorted((row for row in rows_in(params.SSL_ROWS_DIR) if row["arm"] in ssl.arms and row["seed"] in ssl.seeds),
                  key=lambda row: (ssl.arms.index(row["arm"]), ssl.seeds.index(row["seed"])))
    summary = summarise(rows, ssl.arms, ssl.seeds)
    files.write_json(SUMMARY, summary)
    files.write_json(HEADLINE, headline(summary))
    print(f"ssl benchmark: {len(rows)} rows, {len(summary['missing'])} missing -> {SUMMARY}")
    return summary


def archive(rows_dir: Path) -> dict:
    """The summary of a superseded protocol's rows (kept in rows_dir), written beside them."""
    rows = rows_in(rows_dir)
    if not rows:
        raise params.ParamsError(f"{rows_dir} holds no benchmark rows (<arm>-<seed>.json); name the folder of a superseded protocol")
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    summary = summarise(rows, arms, sorted({row["seed"] for row in rows}))
    files.write_json(rows_dir / "summary.json", summary)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--archive", type=Path, help="summarise a superseded protocol's rows kept in this folder")
    args = parser.parse_args(argv)
    if args.archive:
        archive(args.archive)
    else:
        aggregate(args.params)


if __name__ == "__main__":
    cli.run(main)
