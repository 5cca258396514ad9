"""Bad inputs and faults through `python runtime/segment.py` (cases 2-5, 12-15, 18 and 19 of issue 12).

The models are the 1x1-convolution ONNX graphs of tests/runtime/test_segment.py, so every run
takes about a second; disk faults are injected at the encoder's or the JSON writer's call, or
met for real on a small tmpfs where one can be mounted.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from runtime import files, segment  # noqa: E402
from runtime.video import h264_encoder  # noqa: E402
from tests.reliability.harness import ENV, assert_refused, command, disk_full, files_in, run  # noqa: E402
from tests.runtime.test_segment import scene_model, video_facts  # noqa: E402

SCRIPT = "runtime/segment.py"


def noise_frames(folder: Path, count: int, size=(64, 48), suffix=".png", seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:06d}{suffix}"), rng.integers(0, 255, (size[1], size[0], 3), np.uint8))
    return folder


def with_metadata(model: Path, **entries: str) -> Path:
    """The ONNX file with some of its `stpg.*` contract entries replaced (graph unchanged)."""
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key in entries:
            prop.value = entries[prop.key]
    onnx.save(proto, str(model))
    return model


def segment_cli(*args, cwd: Path, **popen):
    return run(SCRIPT, *args, "--no-progress", cwd=cwd, **popen)


# ------------------------------------------------------------------- valid inputs, right result


def test_case_2_folder_of_mixed_sizes_keeps_every_photo_at_its_own_size(tmp_path):
    photos = tmp_path / "photos"
    noise_frames(photos, 1, size=(64, 48))
    cv2.imwrite(str(photos / "000001.jpg"), np.full((40, 96, 3), 90, np.uint8))
    labels, video, stats = tmp_path / "out" / "labels", tmp_path / "out" / "overlay.mp4", tmp_path / "stats.json"
    result = segment_cli("--model", scene_model(tmp_path), "--source", photos, "--save-labels", labels,
                         "--out", video, "--json", stats, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shapes = [cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED).shape for name in ("000000.png", "000001.png")]
    assert shapes == [(48, 64), (40, 96)]
    assert json.loads(stats.read_text())["corrupt"] == 0
    assert video_facts(video) == (2, (64, 48))  # the video takes the first frame's size


def test_case_3_truncated_jpeg_is_skipped_counted_and_named(tmp_path):
    frames = noise_frames(tmp_path / "frames", 2)
    ok, whole = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (480, 640, 3), np.uint8))
    assert ok and len(whole) > 3000
    (frames / "cut.jpg").write_bytes(whole.tobytes()[:3000])  # libjpeg would fill the rest with grey
    labels, stats = tmp_path / "labels", tmp_path / "stats.json"
    result = segment_cli("--model", scene_model(tmp_path), "--source", frames, "--save-labels", labels,
                         "--json", stats, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(stats.read_text())
    assert (summary["frames_out"], summary["corrupt"], summary["corrupt_files"]) == (2, 1, ["cut.jpg"])
    assert "corrupt files skipped: cut.jpg" in result.stdout.splitlines()
    assert sorted(files_in(labels)) == ["000000.png", "000001.png"]
    assert result.stderr == ""  # no anonymous decoder warning either


def test_case_15_output_name_at_the_file_system_limit_is_written(tmp_path):
    out = tmp_path / ("o" * 246 + ".mp4")  # 250 characters; NAME_MAX is 255
    result = segment_cli("--model", scene_model(tmp_path), "--source", noise_frames(tmp_path / "frames", 3),
                         "--out", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert video_facts(out) == (3, (64, 48))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------ refused


def refused_run(tmp_path, *args, words):
    """Run with an existing output folder; refused in one line and the folder unchanged."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "overlay.mp4").write_bytes(b"the overlay of an earlier run")
    before = files_in(out)
    result = segment_cli(*args, "--out", out / "overlay.mp4", "--save-labels", out / "labels",
                         "--json", out / "stats.json", cwd=tmp_path)
    assert_refused(result.returncode, result.stderr, "segment: error: ", *words)
    assert files_in(out) == before


def test_case_12_contract_input_size_that_is_not_the_graphs_is_refused_when_the_model_opens(tmp_path):
    model = with_metadata(scene_model(tmp_path), **{"stpg.input_size": "[256, 512]"})  # graph takes 64x128
    refused_run(tmp_path, "--model", model, "--source", noise_frames(tmp_path / "frames", 2),
                words=("scene.onnx", "(N, 3, 256, 512)", "(1, 3, 64, 128)", "re-export"))


def test_case_13_contract_field_of_the_wrong_type_is_named(tmp_path):
    model = with_metadata(scene_model(tmp_path), **{"stpg.input_size": '"abc"'})
    refused_run(tmp_path, "--model", model, "--source", noise_frames(tmp_path / "frames", 2),
                words=("stpg.input_size must be [height, width]", '"abc"', "re-export"))


def test_case_14_source_name_too_long_for_the_file_system(tmp_path):
    refused_run(tmp_path, "--model", scene_model(tmp_path), "--source", tmp_path / ("s" * 300 + ".mp4"),
                words=("source ", "File name too long", "check the path"))


# ----------------------------------------------------------------------------- full disk


def in_process(args, capsys) -> tuple[int, str]:
    code = segment.main([*map(str, args), "--no-progress"])
    return code, capsys.readouterr().err


def test_case_4_disk_full_while_encoding_the_overlay(tmp_path, monkeypatch, capsys):
    av = pytest.importorskip("av")
    if h264_encoder() is None:
        pytest.skip("no PyAV H.264 encoder here: the OpenCV fallback writer reports no write errors")
    real_open = av.open

    class FillingContainer:
        """The muxer's container on a disk that is full after its first packets."""

        def __init__(self, container):
            self._container, self._writes = container, 0

        def mux(self, packets):
            self._writes += 1
            if self._writes > 2:
                raise av.error.OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._container.mux(packets)

        def __getattr__(self, name):
            return getattr(self._container, name)

    monkeypatch.setattr(av, "open", lambda *a, **k: FillingContainer(real_open(*a, **k)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlay.mp4").write_bytes(b"the overlay of an earlier run")
    before = files_in(out)
    code, err = in_process(["--model", scene_model(tmp_path), "--source", noise_frames(tmp_path / "frames", 6),
                            "--out", out / "overlay.mp4", "--save-labels", out / "labels"], capsys)
    assert_refused(code, err, "output ", "overlay.mp4", "No space left on device", "free some space")
    assert files_in(out) == before


def test_case_4_on_a_real_full_disk(tmp_path, small_file_system):
    disk = small_file_system("disk", 1536 << 10)  # room for the up-front check, not for the video
    frames = noise_frames(tmp_path / "frames", 20, size=(640, 480))
    result = segment_cli("--model", scene_model(tmp_path), "--source", frames, "--out", disk / "overlay.mp4",
                         cwd=tmp_path)
    assert_refused(result.returncode, result.stderr, "overlay.mp4", "No space left on device", "free some space")
    assert files_in(disk) == {}


def test_case_4_disk_already_full_is_refused_before_any_frame(tmp_path, small_file_system):
    disk = small_file_system("disk", 256 << 10)
    result = segment_cli("--model", scene_model(tmp_path), "--source", noise_frames(tmp_path / "frames", 2),
                         "--out", disk / "overlay.mp4", cwd=tmp_path)
    assert_refused(result.returncode, result.stderr, "overlay.mp4", "is nearly full (256 KiB free)", "free some space")
    assert files_in(disk) == {}


def test_case_5_disk_full_at_the_summary_keeps_the_overlay(tmp_path, monkeypatch, capsys):
    def no_room(path, payload, **kw):
        raise disk_full()

    monkeypatch.setattr(files, "write_json", no_room)
    out = tmp_path / "out"
    code, err = in_process(["--model", scene_model(tmp_path), "--source", noise_frames(tmp_path / "frames", 4),
                            "--out", out / "overlay.mp4", "--json", out / "stats.json"], capsys)
    assert_refused(code, err, "stats file ", "stats.json", "No space left on device", "kept")
    assert video_facts(out / "overlay.mp4") == (4, (64, 48))
    assert sorted(files_in(out)) == ["overlay.mp4"]


# ------------------------------------------------------------------------------- signals


def start_realtime_run(tmp_path, out: Path) -> subprocess.Popen:
    """A run over 300 frames played at 30 frames/s, so it lasts ten seconds unless stopped."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(300):
        cv2.imwrite(str(frames / f"{index:06d}.png"), np.full((24, 32, 3), index % 256, np.uint8))
    return subprocess.Popen(command(SCRIPT, "--model", scene_model(tmp_path), "--source", frames, "--out", out,
                                    "--save-labels", tmp_path / "labels", "--json", tmp_path / "stats.json",
                                    "--realtime", "--no-progress"),
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_after_frames(process: subprocess.Popen, labels: Path, sig: int) -> tuple[str, str]:
    try:
        deadline = time.monotonic() + 60
        while (not labels.is_dir() or len(list(labels.iterdir())) < 3) and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(sig)
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()


def test_case_19_sigterm_keeps_a_playable_partial_overlay(tmp_path):
    out = tmp_path / "overlay.mp4"
    process = start_realtime_run(tmp_path, out)
    stdout, stderr = stop_after_frames(process, tmp_path / "labels", signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    summary = json.loads((tmp_path / "stats.json").read_text())
    count, size = video_facts(out)
    assert summary["interrupted"] is True and 3 <= count == summary["frames_out"] < 300 and size == (32, 24)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_case_18_next_run_removes_the_temporary_a_sigkill_left(tmp_path):
    out = tmp_path / "overlay.mp4"
    process = start_realtime_run(tmp_path, out)
    stop_after_frames(process, tmp_path / "labels", signal.SIGKILL)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".part.mp4")]
    assert len(leftovers) == 1 and not out.exists()
    result = segment_cli("--model", scene_model(tmp_path), "--source", tmp_path / "frames", "--out", out,
                         "--max-frames", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert video_facts(out)[0] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
