"""DVC stage `segment_demo`: the deployed artefacts (fp32, and int8 as a CPU vehicle would run it)
through `runtime/segment.py` on the prepared dataset's demo clip, scored against its labels.

The clip is whatever `prepare` recorded in data/prepared/demo.json (the synthetic dashcam video,
or a dataset's val images as an image folder), so the stage runs on any dataset. Each run's full
summary goes to metrics/segment_demo[_int8].json; the few figures `dvc metrics show` lists go to
metrics/demo.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime import files, segment
from runtime.pipeline import GLASS_TO_GLASS
from training import cli, params
from training.data.datasets import DatasetError

DEMO = Path("data/prepared/demo.json")
RUNS = {"fp32": ("models/export/gen_student.onnx", "outputs/demo_overlay.mp4", "metrics/segment_demo.json"),
        "int8": ("models/export/gen_student_int8.onnx", "outputs/demo_overlay_int8.mp4",
                 "metrics/segment_demo_int8.json")}
HEADLINE = Path("metrics/demo.json")


def read_demo(path: Path = DEMO) -> dict:
    try:
        demo = json.loads(path.read_text())
        return {"source": demo["source"], "gt_labels": demo["gt_labels"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(f"demo clip record {path} is missing or damaged; run `dvc repro prepare`") from None


def headline(summaries: dict[str, dict]) -> dict:
    """Per precision: the clip's mIoU (a fraction, like every metrics file), FPS and p99 glass to glass."""
    return {name: {"miou": s.get("miou"), "fps": round(s["fps"], 2),
                   "p99_ms": s["latency_ms"][GLASS_TO_GLASS]["p99"]}
            for name, s in summaries.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = params.load("segment_demo", args.params)
    demo = read_demo()
    summaries = {}
    for name, (model, overlay, summary) in RUNS.items():
        code = segment.main(["--model", model, "--source", demo["source"], "--gt-labels", demo["gt_labels"],
                             "--backend", cfg.backend, "--alpha", str(cfg.alpha), "--out", overlay,
                             "--json", summary, "--no-progress"])
        if code != 0:
            raise SystemExit(code)  # segment.py printed the one-line reason
        summaries[name] = json.loads(Path(summary).read_text())
    files.write_json(HEADLINE, headline(summaries))


if __name__ == "__main__":
    cli.run(main)
