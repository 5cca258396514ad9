"""Power cuts: every writer makes its output durable before it reports success.

`disk_log` (tests/conftest.py) records fsync and rename calls in order and stands in for a power
cut: an output counts as durable only if its data was synced before the rename that gave it its
final name and its folder after. The writers that take names on their own (the overlay video and
label PNGs, the export's artefacts, checkpoints, the generated dataset) are each run here.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from export import run as export_run
from runtime import segment
from runtime.engines.sidecar import sidecar_path
from tests.runtime.test_segment import scene_model
from training import prepare

REPO = Path(__file__).resolve().parents[2]


def test_segment_outputs_are_durable_when_it_reports_success(tmp_path, disk_log):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        cv2.imwrite(str(frames / f"{index:06d}.png"), np.full((64, 128, 3), 60 * index, np.uint8))
    out = tmp_path / "out"
    code = segment.main(["--model", str(scene_model(tmp_path)), "--source", str(frames), "--out",
                         str(out / "overlay.mp4"), "--save-labels", str(out / "labels"), "--json",
                         str(out / "run.json"), "--backend", "onnxruntime", "--threads", "1", "--no-progress"])
    assert code == 0
    assert json.loads((out / "run.json").read_text())["frames_out"] == 3
    for path in [out / "overlay.mp4", out / "run.json", *[out / "labels" / f"{i:06d}.png" for i in range(3)]]:
        assert disk_log.durable(path), path


def test_export_artefacts_are_durable_and_an_engine_never_lands_before_its_sidecar(tmp_path, disk_log):
    staging, out_dir = tmp_path / "staging", tmp_path / "export"
    staging.mkdir()
    for name in ("model.onnx", "model_fp16.engine"):
        (staging / name).write_bytes(b"artefact")
    sidecar_path(staging / "model_fp16.engine").write_text("{}")
    export_run.publish_artefacts(staging, out_dir, ["model.onnx", "model_fp16.engine"])
    engine, sidecar = out_dir / "model_fp16.engine", sidecar_path(out_dir / "model_fp16.engine")
    assert all(disk_log.durable(path) for path in (out_dir / "model.onnx", engine, sidecar))
    renames = [event[2] for event in disk_log.events if event[0] == "rename"]
    assert renames.index(str(sidecar)) < renames.index(str(engine))


def test_the_demo_frames_of_a_real_dataset_are_durable(tmp_path, disk_log):
    pairs = []
    for index in range(2):
        image, label = tmp_path / f"img{index}.png", tmp_path / f"lab{index}.png"
        cv2.imwrite(str(image), np.zeros((8, 16, 3), np.uint8))
        cv2.imwrite(str(label), np.full((8, 16), 255, np.uint8))
        pairs.append((image, label))
    out = tmp_path / "prepared"
    out.mkdir()
    prepare.write_val_frames(pairs, 2, out)
    assert disk_log.durable(out / "val_frames") and disk_log.durable(out / "val_frames_labels")


def test_no_code_renames_a_file_except_through_runtime_files():
    """A rename outside runtime/files.py would skip its syncs; this finds any that creeps in."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    rename = re.compile(r"\bos\.(replace|rename|renames)\(|\bshutil\.move\(|\.rename\(|\bPath\([^)]*\)\.replace\(")
    found = [f"{path}:{number}" for path in tracked if not path.startswith("tests/") and path != "runtime/files.py"
             for number, line in enumerate((REPO / path).read_text().splitlines(), 1) if rename.search(line)]
    assert found == []
