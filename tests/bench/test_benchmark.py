"""The benchmark harness: well-formed outputs on a tiny model and clip, and its arithmetic.

The model is a 1x1 convolution built with onnx.helper, so neither torch nor the export
package is needed. Nothing here asserts on a measured time.
"""
from __future__ import annotations

import csv
import json
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

from bench import cli, measure, report  # noqa: E402
from runtime.contract import ModelContract  # noqa: E402
from runtime.pipeline import GLASS_TO_GLASS, STAGES  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
STAT_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps", "iters"}


def write_model(path: Path, input_hw=(32, 64), classes=3, precision="fp32") -> Path:
    """Normalised RGB -> K stride-4 logits (1x1 conv + 4x4 average pool), with its contract."""
    height, width = input_hw
    weights = np.linspace(-1, 1, classes * 3, dtype=np.float32).reshape(classes, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["image", "weight"], ["logits"]),
             helper.make_node("AveragePool", ["logits"], ["lowres"], kernel_shape=[4, 4], strides=[4, 4])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("lowres", TensorProto.FLOAT, [1, classes, height // 4, width // 4])],
        [numpy_helper.from_array(weights, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = ModelContract(
        classes=tuple(f"class{i}" for i in range(classes)),
        palette=tuple((60 * i % 256, 100, 200) for i in range(classes)),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=tuple(input_hw),
        input_layout="nchw_float", output_kind="lowres_logits", precision=precision)
    helper.set_model_props(model, contract.to_metadata())
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two copies of the tiny model (as fp32 and int8 would be) and a 4-frame image folder."""
    root = tmp_path_factory.mktemp("bench_inputs")
    models = [write_model(root / "tiny.onnx"), write_model(root / "tiny_int8.onnx", precision="int8")]
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(3)
    for index in range(4):
        cv2.imwrite(str(frames / f"{index:06d}.png"), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    return models, frames


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def test_full_run_writes_every_output(inputs, tmp_path):
    models, frames = inputs
    out = tmp_path / "out"
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": {"tiny": {"p50_ms": 1e9}}}))
    result = run_cli("--model", models[0], "--model", models[1], "--video", frames, "--warmup", 1, "--iters", 3,
                     "--frames", 3, "--threads", 1, "--resolutions", "48x32", "720p", "--input-size", 8, 16,
                     "--json", out / "metrics" / "bench.json", "--csv-dir", out / "plots",
                     "--markdown", out / "bench.md", "--plot", out / "bench.png", "--compare", old, "--encode")
    assert result.returncode == 0, result.stderr

    data = json.loads((out / "metrics" / "bench.json").read_text())
    assert set(data) == {"model", "ops", "e2e", "engines", "threads", "config", "machine"}
    assert set(data["model"]) == {"tiny", "tiny_int8"}
    for record in data["model"].values():
        assert set(record) == STAT_KEYS | {"intra_op_threads"}
        assert record["iters"] == 3 and record["intra_op_threads"] == 1
        assert record["p50_ms"] <= record["p90_ms"] <= record["p99_ms"]
    assert set(data["ops"]) == set(measure.OPS)
    for op, per_impl in data["ops"].items():
        baselines = {"shortcut"} if op == "upsample_argmax" else set()
        assert set(per_impl) == {"c", "opencv", "numpy", "memcpy", "speedup"} | baselines
        sizes = {"16x8"} if op == "argmax" else {"48x32", "720p"}
        for impl, per_res in per_impl.items():
            assert set(per_res) == sizes
            for record in per_res.values():
                if impl == "speedup":
                    expected = {f"c_vs_{b}" for b in {"opencv", "numpy"} | baselines}
                    assert set(record) == expected | {f"c_vs_{b}_loaded" for b in {"opencv"} | baselines}
                    continue
                assert STAT_KEYS | {"bytes", "gbps"} <= set(record)
                if impl == "numpy":  # the reference is not timed again under load
                    assert "loaded" not in record
                    continue
                assert set(record["loaded"]) == STAT_KEYS and record["loaded"]["iters"] == 3
                assert record["load_ratio"] == pytest.approx(record["loaded"]["p50_ms"] / record["p50_ms"])
    upsample = data["ops"]["upsample_argmax"]
    assert upsample["speedup"]["720p"]["c_vs_shortcut_loaded"] == pytest.approx(
        upsample["shortcut"]["720p"]["loaded"]["p50_ms"] / upsample["c"]["720p"]["loaded"]["p50_ms"])
    assert data["ops"]["blend"]["c"]["720p"]["bytes"] == 1280 * 720 * 7
    assert data["ops"]["blend"]["memcpy"]["720p"]["bytes"] == 1280 * 720 * 7 - 1280 * 720 * 7 % 2
    assert set(data["e2e"]) == {"tiny", "tiny_int8"}  # fp32 and int8 both run end to end
    for name, per_mode in data["e2e"].items():
        assert per_mode["offline_video"]["codec"] in ("libx264", "h264", "libopenh264", "mp4v")
        model_fps = data["model"][name]["fps"]
        for mode in ("offline", "realtime", "offline_video"):
            record = per_mode[mode]
            assert record["frames"] + record["dropped"] == 3
            assert {*STAGES, GLASS_TO_GLASS} <= set(record)
            assert set(record["decode"]) == STAT_KEYS - {"fps"}
            if mode == "realtime":  # paced at the video's rate: no ratio
                assert "ratio_to_model" not in record
            else:
                assert record["ratio_to_model"] == pytest.approx(record["fps"] / model_fps)
    assert data["threads"] == {"ops": 1, "ops_backend": "c", "inference": 1, "cores": data["threads"]["cores"]}
    assert data["config"]["ops_load_model"] == "tiny" and data["config"]["e2e_models"] == ["tiny", "tiny_int8"]
    assert {"cpu", "cores", "gpu", "date", "versions"} <= set(data["machine"])
    assert {"numpy", "cv2", "onnxruntime", "python"} <= set(data["machine"]["versions"])

    model_rows = list(csv.DictReader((out / "plots" / "model.csv").open()))
    assert list(model_rows[0]) == ["series", "iteration", "ms"]
    assert sorted({row["series"] for row in model_rows}) == ["tiny", "tiny_int8"] and len(model_rows) == 6
    ops_series = {row["series"] for row in csv.DictReader((out / "plots" / "ops.csv").open())}
    assert {"preprocess/c/720p", "argmax/memcpy/16x8", "blend/opencv/48x32"} <= ops_series
    assert {"preprocess/c/720p/loaded", "upsample_argmax/shortcut/720p/loaded"} <= ops_series
    e2e_rows = list(csv.DictReader((out / "plots" / "e2e.csv").open()))
    assert {row["series"] for row in e2e_rows} >= {f"tiny_int8/offline/{stage}" for stage in (*STAGES, GLASS_TO_GLASS)}

    markdown = (out / "bench.md").read_text()
    for heading in ("## Model only", "## Ops", "## End to end (tiny,", "## End to end (tiny_int8,"):
        assert heading in markdown
    assert "| upsample_argmax | 720p | c |" in markdown and "| tiny_int8 |" in markdown
    assert "| upsample_argmax | 720p | shortcut |" in markdown and "while tiny infers back to back" in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --compare: the hand-written old p50 is 1e9 ms, so the new run is faster.
    line = next(line for line in result.stdout.splitlines() if line.startswith("model.tiny.p50_ms"))
    assert line.endswith("faster")
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp files left


def test_ops_level_alone_needs_no_model_and_prints_markdown(tmp_path):
    result = run_cli("--levels", "ops", "--warmup", 0, "--iters", 1, "--resolutions", "16x16",
                     "--input-size", 8, 8, "--classes", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "## Ops (network input 8x8, 2 classes)" in result.stdout
    assert "## Model only" not in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--model", "missing.onnx", "--levels", "model"], "model missing.onnx: no such file"),
    (["--model", "{model}", "--video", "missing.mp4", "--levels", "e2e"], "video missing.mp4: no such file"),
    (["--model", "{model}", "--video", "rtsp://admin:pw-Zq8@127.0.0.1:1/x", "--levels", "e2e"],
     "video rtsp://***@127.0.0.1:1/x: no such file"),  # a camera password is never printed
    (["--levels", "ops", "--resolutions", "huge"], "--resolutions: 'huge'"),
    (["--levels", "ops", "--compare", "missing.json"], "--compare missing.json: no such file"),
    (["--levels", "model"], "no model to time"),
])
def test_bad_input_is_one_line_and_exit_2(inputs, tmp_path, args, fragment):
    models, _ = inputs
    result = run_cli(*[a.format(model=models[0]) for a in args], "--json", tmp_path / "b.json", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("benchmark: error: ") and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "pw-Zq8" not in result.stderr
    assert not (tmp_path / "b.json").exists()


def test_bad_number_is_exit_2():
    result = run_cli("--iters", 0)
    assert result.returncode == 2 and "--iters must be >= 1" in result.stderr


def test_model_that_is_not_onnx_exits_2(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    result = run_cli("--model", broken, "--levels", "model", cwd=tmp_path)
    assert result.returncode == 2 and "cannot load" in result.stderr


# ------------------------------------------------------------------------------ arithmetic


def test_summarize_on_known_samples():
    # Sorted 1, 2, 3, 4, 10: numpy linear interpolation at rank q/100 * 4.
    stats = measure.summarize([4.0, 1.0, 10.0, 2.0, 3.0])
    assert stats["p50_ms"] == pytest.approx(3.0)
    assert stats["p90_ms"] == pytest.approx(4.0 + 0.6 * 6.0)  # rank 3.6: 4 + 0.6 * (10 - 4) = 7.6
    assert stats["p99_ms"] == pytest.approx(4.0 + 0.96 * 6.0)  # rank 3.96: 9.76
    assert stats["mean_ms"] == pytest.approx(4.0)
    assert stats["fps"] == pytest.approx(250.0)  # 1000 ms / 4 ms
    assert stats["iters"] == 5


def test_summarize_without_samples_is_all_none():
    stats = measure.summarize([])
    assert stats == {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "fps": None, "iters": 0}


def test_op_bytes_hand_computed():
    # 1080p frame, 512x1024 input, 19 classes.
    assert measure.op_bytes("preprocess", (1920, 1080), (512, 1024), 19) == 1920 * 1080 * 3 + 3 * 512 * 1024 * 4
    assert measure.op_bytes("preprocess", (1920, 1080), (512, 1024), 19) == 12_512_256
    # logits 19 x 128 x 256 float32 = 2,490,368 B in; 2,073,600 label bytes out.
    assert measure.op_bytes("upsample_argmax", (1920, 1080), (512, 1024), 19) == 4_563_968
    # 19 x 512 x 1024 x 4 = 39,845,888 in, 524,288 out.
    assert measure.op_bytes("argmax", (1920, 1080), (512, 1024), 19) == 40_370_176
    # frame 6,220,800 + labels 2,073,600 in, frame 6,220,800 out.
    assert measure.op_bytes("blend", (1920, 1080), (512, 1024), 19) == 14_515_200


def test_bandwidth_is_bytes_over_time():
    assert measure.gbps(12_000_000, 2.0) == pytest.approx(6.0)  # 12 MB in 2 ms = 6 GB/s
    assert measure.gbps(1, 0.0) is None


def test_round_robin_rotates_the_first_candidate_and_skips_warmup():
    order = []
    candidates = {name: (lambda n: lambda: order.append(n))(name) for name in "abc"}
    samples = measure.time_round_robin(candidates, warmup=1, iters=3)
    assert order == list("abc" "bca" "cab" "abc")
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}


class CountingEngine:
    """Counts its inferences; fails at call `fail_at` when given."""

    def __init__(self, precision="fp32", fail_at=None):
        self.contract = ModelContract(classes=("a",), palette=((0, 0, 0),), mean=(0, 0, 0), std=(1, 1, 1),
                                      input_size=(4, 4), input_layout="nhwc_uint8", output_kind="labels",
                                      precision=precision)
        self.calls, self.fail_at = 0, fail_at

    def infer(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("inference failed on purpose")
        assert batch.shape == (1, 4, 4, 3) and batch.dtype == np.uint8
        time.sleep(0.001)


def test_inference_load_runs_back_to_back_only_inside_the_block():
    engine = CountingEngine()
    with measure.InferenceLoad(engine) as load:
        assert engine.calls >= 1  # started and warm before the block runs
        time.sleep(0.02)
    stopped_at = engine.calls
    time.sleep(0.02)
    assert engine.calls == stopped_at == load.inferences
    with pytest.raises(RuntimeError, match="on purpose"):
        with measure.InferenceLoad(CountingEngine(fail_at=2)):
            time.sleep(0.02)


def test_e2e_runs_the_chosen_precisions_or_the_first_model():
    engines = {"fp": CountingEngine("fp32"), "half": CountingEngine("fp16"), "q": CountingEngine("int8")}
    assert cli.e2e_models(engines, ["fp32", "int8"]) == ["fp", "q"]
    assert cli.e2e_models({"half": engines["half"]}, ["int8"]) == ["half"]


def test_scene_logits_are_regions_not_noise():
    logits = measure.scene_logits(np.random.default_rng(0), 19, 128, 256)
    assert logits.shape == (19, 128, 256) and logits.dtype == np.float32
    labels = np.argmax(logits, axis=0)
    boundary = ((labels[:-1, :-1] != labels[1:, :-1]) | (labels[:-1, :-1] != labels[:-1, 1:])
                | (labels[:-1, :-1] != labels[1:, 1:]))
    # The documented scale: boundaries cross about 11 % of the 2x2 cells (noise: nearly all).
    assert 0.05 < boundary.mean() < 0.2


def test_model_names_are_metric_safe_and_unique():
    names = measure.model_names([Path("a/gen.student.onnx"), Path("b/gen.student.onnx"), Path("int8.onnx")])
    assert names == ["gen_student", "gen_student_2", "int8"]


# -------------------------------------------------------------------------------- compare


def test_compare_ratios_and_verdicts_on_hand_written_files(tmp_path):
    old = {"model": {"m": {"p50_ms": 20.0, "fps": 50.0, "iters": 30}},
           "ops": {"blend": {"speedup": {"720p": {"c_vs_opencv": 4.0}}, "c": {"720p": {"gbps": 8.0}}}},
           "e2e": {"offline": {"fps": 10.0}, "ratio_to_model": 0.5},
           "only_old": 1.0, "machine": {"cpu": "x", "cores": 2}}
    new = {"model": {"m": {"p50_ms": 25.0, "fps": 40.0, "iters": 30}},
           "ops": {"blend": {"speedup": {"720p": {"c_vs_opencv": 5.0}}, "c": {"720p": {"gbps": 8.0}}}},
           "e2e": {"offline": {"fps": 0.0}, "ratio_to_model": 0.75},
           "only_new": 3.0, "machine": {"cpu": "y", "cores": 4}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    rows = report.compare(report.load_results(tmp_path / "old.json"),
                             report.load_results(tmp_path / "new.json"))
    assert rows == [
        ("e2e.offline.fps", 10.0, 0.0, 0.0, "slower"),
        ("e2e.ratio_to_model", 0.5, 0.75, 1.5, "faster"),
        ("machine.cores", 2.0, 4.0, 2.0, ""),
        ("model.m.fps", 50.0, 40.0, 0.8, "slower"),
        ("model.m.iters", 30.0, 30.0, 1.0, ""),
        ("model.m.p50_ms", 20.0, 25.0, 1.25, "slower"),
        ("ops.blend.c.720p.gbps", 8.0, 8.0, 1.0, "same"),
        ("ops.blend.speedup.720p.c_vs_opencv", 4.0, 5.0, 1.25, "faster"),
    ]
    text = report.format_compare(rows)
    assert "model.m.p50_ms" in text and "1.250x slower" in text


def test_compare_with_zero_old_value_has_no_ratio():
    assert report.compare({"a_ms": 0.0}, {"a_ms": 1.0}) == [("a_ms", 0.0, 1.0, None, "")]


def test_compare_rejects_non_json(tmp_path):
    path = tmp_path / "old.json"
    path.write_text("[1, 2]")
    with pytest.raises(measure.BenchmarkError, match="not a JSON object"):
        report.load_results(path)
    path.write_text("{")
    with pytest.raises(measure.BenchmarkError, match="not a readable JSON file"):
        report.load_results(path)


def test_cuda_calls_get_device_inputs_and_wait_for_the_kernels():
    """The CUDA wrapper against the runtime.cuda device surface it uses: to_device and synchronize."""
    events = []

    class FakeDevice:
        @staticmethod
        def to_device(array):
            return f"device{array.shape}"

        @staticmethod
        def synchronize(stream):
            events.append("synchronize")

    class FakeOps:
        device = FakeDevice

        def blend(self, frame, labels, palette, alpha):
            events.append(("blend", frame, labels, type(palette).__name__, alpha))

    cuda = measure._SynchronisedCuda(FakeOps())
    call = measure._bind(cuda, "blend", np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3), np.uint8),
                           np.zeros((4, 3), np.uint8), 0.5)
    assert events == []  # uploads happen once, at binding; nothing runs yet
    call()
    assert events == [("blend", "device(2, 3, 3)", "device(2, 3)", "ndarray", 0.5), "synchronize"]


# ------------------------------------------------------------------------------ rig and soak


def test_rig_and_soak_levels_write_their_records_and_tables(inputs, tmp_path):
    models, frames = inputs
    out = tmp_path / "out"
    result = run_cli("--model", models[0], "--model", models[1], "--video", frames, "--levels", "rig", "soak",
                     "--rig-cameras", 1, 2, "--rig-frames", 3, "--soak-frames", 9, "--soak-window", 4, "--threads", 1,
                     "--encode", "--json", out / "bench.json", "--markdown", out / "bench.md")
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench.json").read_text())
    assert data["config"]["rig_model"] == "tiny_int8"  # the int8 artefact by default
    assert set(data["rig"]) == {"1", "2"}
    live = data["rig_realtime"]
    assert live["cameras"] == 2 and len(live["camera_fps"]) == len(live["dropped"]) == 2
    assert live["p99_over_infer"] == pytest.approx(live["worst_p99_glass_to_glass_ms"] / live["infer_p50_ms"])
    assert live["fps_spread"] == pytest.approx(max(live["camera_fps"]) / min(live["camera_fps"]) - 1)
    for count, record in data["rig"].items():
        cameras = int(count)
        assert (record["rig"]["processes"], record["separate"]["processes"]) == (1, cameras)
        for run in ("rig", "separate"):
            row = record[run]
            assert row["frames"] == 3 * cameras and len(row["camera_fps"]) == cameras
            assert row["fps"] > 0 and row["rss_mb"] > 0 and row["worst_p99_glass_to_glass_ms"] > 0
        assert record["fps_ratio"] == pytest.approx(record["rig"]["fps"] / record["separate"]["fps"])
    soak = data["soak"]
    # 9 frames of a looped 4-frame folder: two full windows of 4
    assert soak["frames"] == 9 and [w["frames"] for w in soak["windows"]] == [4, 8]
    assert all(w["fds"] > 0 and w["rss_mb"] > 0 and w["p99_ms"] > 0 for w in soak["windows"])
    markdown = (out / "bench.md").read_text()
    assert "## Rig (tiny_int8," in markdown and "| 2 | separate | 2 |" in markdown
    assert "Real time (2 cameras, each paced at the video's frame rate" in markdown
    assert "## Soak (tiny_int8," in markdown and "looped for 9 frames" in markdown and "| 8 |" in markdown
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_soak_windows_by_hand():
    rss = iter([100 * 2**20, 102 * 2**20]).__next__
    fds = iter([10, 11]).__next__
    windows = measure.SoakWindows(3, resident=rss, fds=fds)
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0):
        windows.add(value)
    record = windows.record()
    # p99 of 1, 2, 3 at rank 1.98: 2.98; of 4, 5, 6: 5.98; the 7th frame starts a window not finished
    assert record["windows"] == [{"frames": 3, "rss_mb": 100.0, "fds": 10, "p99_ms": pytest.approx(2.98)},
                                 {"frames": 6, "rss_mb": 102.0, "fds": 11, "p99_ms": pytest.approx(5.98)}]
    assert record["frames"] == 7 and record["window"] == 3
    assert record["rss_ratio"] == pytest.approx(1.02) and record["fds_added"] == 1
    assert record["p99_ratio"] == pytest.approx(5.98 / 2.98)


def camera(frames_out, fps, p99):
    return {"frames_out": frames_out, "fps": fps, "latency_ms": {"glass_to_glass": {"p99": p99}}}


def test_rig_record_by_hand():
    separate = [{**camera(10, 5.0, 50.0), "wall_s": 2.0}, {**camera(20, 5.0, 70.0), "wall_s": 4.0}]
    record = measure.rig_record(separate, [100 * 2**20, 50 * 2**20])
    # 30 frames over the longest run (4 s); the worse p99 of the two; 100 + 50 MiB
    assert record == {"fps": 7.5, "frames": 30, "wall_s": 4.0, "camera_fps": [5.0, 5.0],
                      "worst_p99_glass_to_glass_ms": 70.0, "rss_mb": 150.0, "processes": 2}
    rig = {"wall_s": 3.0, "cameras": {"cam0": camera(12, 4.0, 90.0), "cam1": camera(12, 4.0, None)}}
    record = measure.rig_record([rig], [120 * 2**20])
    assert (record["fps"], record["worst_p99_glass_to_glass_ms"], record["processes"]) == (8.0, 90.0, 1)


def test_soak_shorter_than_a_window_is_exit_2():
    result = run_cli("--levels", "soak", "--soak-frames", 5, "--soak-window", 10)
    assert result.returncode == 2 and "--soak-frames (5) must be at least one --soak-window (10)" in result.stderr


def test_drive_level_records_the_video_as_a_drive_and_compares_the_fps(inputs, tmp_path):
    pytest.importorskip("rosbags")
    models, frames = inputs
    out = tmp_path / "out"
    result = run_cli("--model", models[1], "--video", frames, "--levels", "drive", "--drive-frames", 3,
                     "--threads", 1, "--json", out / "bench.json", "--markdown", out / "bench.md")
    assert result.returncode == 0, result.stderr
    drive = json.loads((out / "bench.json").read_text())["drive"]
    assert drive["frames"] == 3 and drive["topics"] == list(measure.DRIVE_TOPICS)
    for name in ("mp4", "drive"):  # two cameras of 3 frames each, in one process
        assert drive[name]["frames"] == 6 and drive[name]["processes"] == 1 and len(drive[name]["camera_fps"]) == 2
    assert drive["fps_ratio"] == pytest.approx(drive["drive"]["fps"] / drive["mp4"]["fps"])
    markdown = (out / "bench.md").read_text()
    assert "## Recorded drive (tiny_int8," in markdown and "| MCAP drive | output bag |" in markdown
    assert f"Drive / video: {drive['fps_ratio']:.2f}x the FPS." in markdown


def test_write_drive_stamps_the_frames_at_the_video_rate(inputs, tmp_path):
    rosbags = pytest.importorskip("rosbags.highlevel")
    _, frames = inputs  # a 4-frame folder, played at 30 frames/s
    assert measure.write_drive(str(frames), tmp_path / "drive.mcap", 3) == 3
    with rosbags.AnyReader([tmp_path / "drive.mcap"]) as reader:
        assert sorted(c.topic for c in reader.connections) == sorted(measure.DRIVE_TOPICS)
        stamps = [(connection.topic, timestamp) for connection, timestamp, _ in reader.messages()]
    # frame i at round(i * 1e9 / 30) ns: 0, 33333333, 66666667 on each topic
    for topic in measure.DRIVE_TOPICS:
        assert [stamp for name, stamp in stamps if name == topic] == [0, 33_333_333, 66_666_667]
