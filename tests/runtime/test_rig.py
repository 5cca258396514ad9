"""The camera rig: round-robin batching, the latency reservoir, reconnection back-off, feeds that
loop or reconnect (against an MJPEG-over-HTTP server on the loopback address), and segment.py
running several cameras in one process: a failing camera isolated, per-camera outputs, the rig
summary, one-line errors with nothing written.
"""
from __future__ import annotations

import errno
import http.server
import itertools
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import rig, segment, video
from runtime.engines.base import Engine
from runtime.pipeline import Processor, Reservoir, RoundRobin, percentiles
from runtime.rig import Feed, RigError, backoff_delays, load_rig_file
from runtime.video import Source, SourceError
from tests.runtime.test_pipeline import contract
from tests.runtime.test_segment import files_under, scene_model, video_facts, write_model

# ------------------------------------------------------------------------------ scheduling


def picks(scheduler: RoundRobin, waiting, batches: int) -> list[list[int]]:
    return [[camera for camera, _ in scheduler.pick(lambda c: "frame" if waiting(c) else None)]
            for _ in range(batches)]


def test_round_robin_starts_each_batch_after_the_last_camera_served():
    # 3 cameras, batches of 2, all waiting: 0 1 | 2 0 | 1 2 | 0 1
    assert picks(RoundRobin(3, most=2), lambda c: True, 4) == [[0, 1], [2, 0], [1, 2], [0, 1]]


def test_a_fast_camera_gets_one_slot_per_batch_and_a_stalled_one_blocks_nobody():
    # camera 0 always has frames, camera 1 is stalled: batches of 3 serve 0 and 2 once each
    assert picks(RoundRobin(3, most=3), lambda c: c != 1, 2) == [[0, 2], [0, 2]]
    # batches of one alternate between the two live cameras instead of serving camera 0 only
    assert picks(RoundRobin(3, most=1), lambda c: c != 1, 4) == [[0], [2], [0], [2]]
    assert picks(RoundRobin(2, most=2), lambda c: False, 1) == [[]]


class ScriptedRandom:
    """randrange answers given in advance; records the bounds asked for."""

    def __init__(self, answers):
        self.answers, self.bounds = iter(answers), []

    def randrange(self, bound):
        self.bounds.append(bound)
        return next(self.answers)


def test_reservoir_is_exact_until_full_then_replaces_with_probability_size_over_seen():
    rng = ScriptedRandom([1, 3])
    reservoir = Reservoir(size=3, rng=rng)
    for value in (10.0, 20.0, 30.0):
        reservoir.add(value)
    # exact while not full: positions 0..2, p90 at 1.8 -> 20 + 0.8 * 10, p99 at 1.98 -> 29.8
    assert percentiles(reservoir) == pytest.approx({"p50": 20.0, "p90": 28.0, "p99": 29.8})
    reservoir.add(40.0)  # 4th value: randrange(4) -> 1 < 3, replaces slot 1
    reservoir.add(50.0)  # 5th value: randrange(5) -> 3, not kept
    assert list(reservoir) == [10.0, 40.0, 30.0] and len(reservoir) == 3 and reservoir.seen == 5
    assert rng.bounds == [4, 5]


def test_backoff_doubles_from_the_first_delay_up_to_the_bound():
    assert list(itertools.islice(backoff_delays(0.25, 2.0), 6)) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


class EchoEngine(Engine):
    """uint8 NHWC input, labels output: each image's labels are its first channel; records batch sizes."""

    name = "echo"

    def __init__(self, fixed_batch):
        self.contract = contract()
        self.fixed_batch = fixed_batch
        self.batches = []

    def infer(self, batch):
        self.batches.append(len(batch))
        return batch[..., 0].copy()


@pytest.mark.parametrize("fixed, calls", [(None, [3]), (1, [1, 1, 1]), (2, [4])])
def test_frames_of_several_cameras_are_batched_as_the_engine_allows_and_split_back(fixed, calls):
    engine = EchoEngine(fixed)
    processor = Processor(engine)
    height, width = engine.contract.input_size
    inputs = [np.full((1, height, width, 3), 10 * camera, np.uint8) for camera in range(3)]
    outputs = processor.infer_batch(inputs)
    assert engine.batches == calls  # stacked, one after another, or padded to the fixed batch of 2
    assert [output.shape for output in outputs] == [(1, height, width)] * 3
    assert [int(output[0, 0, 0]) for output in outputs] == [0, 10, 20]


# ------------------------------------------------------------------------------ feeds


class LiveStub:
    """A live source delivering the given frame indices, then losing its connection."""

    is_live, fps, size, frame_count = True, 10.0, (4, 2), None
    spec = "rtsp://camera"

    def __init__(self, indices):
        self.indices, self.corrupt_files, self.corrupt_frames, self.closed = indices, [], 1, False

    def __iter__(self):
        return ((index, np.zeros((2, 4, 3), np.uint8)) for index in self.indices)

    def close(self):
        self.closed = True


def test_live_feed_reconnects_and_records_the_outage():
    attempts = iter([SourceError("refused"), SourceError("refused"), LiveStub([0, 1, 2])])

    def opener(spec):
        answer = next(attempts)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = iter([0.0, 10.0, 11.5]).__next__  # began, lost at 10 s, back at 11.5 s
    first = LiveStub([0, 1, 2])
    feed = Feed(first, opener=opener, clock=clock)
    indices = [index for index, _ in itertools.islice(feed, 5)]
    assert first.closed
    # 1.5 s at 10 FPS: 15 frames lost, so indices go on from 3 + 15
    assert feed.outages == [{"start_s": 10.0, "length_s": 1.5, "frames_lost": 15}]
    assert indices[:5] == [0, 1, 2, 18, 19]
    assert feed.corrupt_frames == 2


def test_looped_file_feed_replays_with_indices_going_on(tmp_path):
    for index in range(3):
        cv2.imwrite(str(tmp_path / f"{index:06d}.png"), np.full((8, 8, 3), 50 * index, np.uint8))
    with Feed(video.open_source(tmp_path), loop=True) as feed:
        frames = list(itertools.islice(feed, 7))
    assert [index for index, _ in frames] == list(range(7)) and feed.frame_count is None
    assert [int(frame[0, 0, 0]) for _, frame in frames] == [0, 50, 100, 0, 50, 100, 0]


def test_cancel_ends_the_wait_for_a_camera_that_does_not_come_back():
    def refuse(spec):
        raise SourceError("refused")

    feed = Feed(LiveStub([0]), opener=refuse)
    threading.Timer(0.3, feed.cancel).start()
    assert [index for index, _ in feed] == [0]


# ------------------------------------------------------------------------------ rig files


def rig_file(tmp_path, text: str) -> Path:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    return path


def test_rig_file_names_each_camera_and_its_outputs(tmp_path):
    path = rig_file(tmp_path, "cameras:\n  - id: front\n    source: 0\n    out: runs/front.mp4\n    realtime: true\n"
                              "  - {id: rear, source: rear.mp4, loop: true}\n")
    front, rear = load_rig_file(path)
    assert front == rig.CameraSpec("front", "0", Path("runs/front.mp4"), None, True, False)
    assert rear == rig.CameraSpec("rear", "rear.mp4", None, None, False, True)


@pytest.mark.parametrize("text, message", [
    ("cameras: []\n", "needs a non-empty list"),
    ("cameras:\n  - {id: a, source: x.mp4, fps: 3}\n", "unknown key 'fps'"),
    ("cameras:\n  - {id: a}\n", "missing `source:`"),
    ("cameras:\n  - {id: ../a, source: x.mp4}\n", "camera id '../a'"),
    ("cameras:\n  - {id: a, source: x.mp4, loop: yes please}\n", "`loop:` must be true or false"),
    ("cameras: [\n", "not valid YAML"),
])
def test_bad_rig_files_are_named(tmp_path, text, message):
    with pytest.raises(RigError, match=message):
        load_rig_file(rig_file(tmp_path, text))


# ------------------------------------------------------------------------------ segment.py rigs


def small_video(path: Path, frames: int, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    for index in range(frames):
        writer.write(np.full((size[1], size[0], 3), (7 * index % 256, 90, 200), np.uint8))
    writer.release()
    return path


def dynamic_model(tmp_path: Path) -> Path:
    """scene_model's network with a dynamic batch axis, so the rig stacks its cameras' frames."""
    weights = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    return write_model(tmp_path / "dynamic.onnx", weights, (64, 128), "lowres_logits", batch="N")


class FailingSource(Source):
    """A camera that delivers five frames and then fails (a device unplugged)."""

    is_live = False

    def __init__(self, spec):
        self.spec, self.fps, self.frame_count = spec, 30.0, None
        super().__init__()

    def _decode(self):
        for index in range(5):
            frame = np.full((48, 64, 3), 30 * index, np.uint8)
            if self._accept(index - 1, index, frame):
                yield index, frame
        raise OSError("camera unplugged")


@pytest.fixture
def failing_source(monkeypatch):
    """`fail://` sources open as FailingSource."""
    real = segment.open_source
    monkeypatch.setattr(segment, "open_source", lambda spec: FailingSource(spec) if str(spec).startswith("fail://")
                        else real(spec))


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = segment.main([str(arg) for arg in (*args, "--no-progress", "--threads", 1)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_rig_of_three_cameras_keeps_going_when_one_fails(tmp_path, failing_source, capsys):
    first, third = small_video(tmp_path / "a.mp4", 12), small_video(tmp_path / "c.mp4", 16)
    out, labels, stats = tmp_path / "out", tmp_path / "labels", tmp_path / "rig.json"
    code, stdout, stderr = run_main(capsys, "--model", dynamic_model(tmp_path), "--source", first,
                                    "--source", "fail://cam", "--source", third, "--out", out,
                                    "--save-labels", labels, "--json", stats)
    assert code == 0, stderr
    assert video_facts(out / "cam0.mp4") == (12, (64, 48))
    assert video_facts(out / "cam1.mp4") == (5, (64, 48))  # the frames done before it failed, playable
    assert video_facts(out / "cam2.mp4") == (16, (64, 48))
    assert [len(files_under(labels / camera)) for camera in ("cam0", "cam1", "cam2")] == [12, 5, 16]
    summary = json.loads(stats.read_text())
    cameras = summary["cameras"]
    assert list(cameras) == ["cam0", "cam1", "cam2"]
    assert [cameras[c]["frames_out"] for c in cameras] == [12, 5, 16] and summary["frames_out"] == 33
    assert cameras["cam1"]["error"] == "OSError: camera unplugged" and "error" not in cameras["cam0"]
    assert cameras["cam2"]["source"] == str(third)
    for camera in cameras.values():
        assert set(camera["latency_ms"]["glass_to_glass"]) == {"p50", "p90", "p99"} and camera["fps"] > 0
    assert summary["fps"] == pytest.approx(33 / summary["wall_s"])
    assert 1 <= summary["batches"] <= 33 and summary["mean_batch"] == pytest.approx(33 / summary["batches"])
    assert summary["engine"]["backend"] == "onnxruntime" and summary["threads"]["inference"] == 1
    assert "rig of 3 cameras" in stdout and "camera failed: OSError: camera unplugged" in stdout
    assert stdout.count("glass_to_glass") == 3


def test_one_source_keeps_the_single_stream_summary(tmp_path, capsys):
    stats = tmp_path / "stats.json"
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", small_video(tmp_path / "a.mp4", 4),
                               "--out", tmp_path / "overlay.mp4", "--json", stats)
    assert code == 0, stderr
    summary = json.loads(stats.read_text())
    assert "cameras" not in summary and "error" not in summary and "outages" not in summary
    assert summary["frames_out"] == 4 and video_facts(tmp_path / "overlay.mp4")[0] == 4


def test_rig_file_outputs_and_loop(tmp_path, capsys):
    clip = small_video(tmp_path / "a.mp4", 6)
    path = rig_file(tmp_path, f"cameras:\n  - {{id: front, source: {clip}, out: {tmp_path / 'front.mp4'}}}\n"
                              f"  - {{id: rear, source: {clip}, loop: true}}\n")
    code, stdout, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--rig", path, "--out", tmp_path / "runs",
                                    "--max-frames", 15)
    assert code == 0, stderr
    assert video_facts(tmp_path / "front.mp4")[0] == 6  # its own output; a file without loop ends
    assert video_facts(tmp_path / "runs" / "rear.mp4")[0] == 15  # --out DIR for the rest; looped to 15
    assert "camera front" in stdout and "camera rear" in stdout


def several_outputs_as_one_file(tmp):
    return ["--out", tmp / "out" / "overlay.mp4"]


def labels_of_one_camera_blocked_by_a_file(tmp):
    (tmp / "out" / "labels").mkdir()
    (tmp / "out" / "labels" / "cam1").write_text("")
    return ["--save-labels", tmp / "out" / "labels"]


def duplicate_ids(tmp):
    return ["--rig", rig_file(tmp, "cameras:\n  - {id: a, source: x}\n  - {id: a, source: y}\n")]


def scoring_a_rig(tmp):
    return ["--gt-labels", tmp]


def missing_second_source(tmp):
    return ["--source", tmp / "missing.mp4"]


@pytest.mark.parametrize("make, message", [
    (several_outputs_as_one_file, "with several cameras --out names a folder"),
    (labels_of_one_camera_blocked_by_a_file, "labels folder"),
    (duplicate_ids, "camera id 'a' is given twice"),
    (scoring_a_rig, "--gt-labels scores one stream"),
    (missing_second_source, "missing.mp4: no such file"),
])
def test_bad_rig_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, make, message):
    (tmp_path / "out").mkdir()
    clip = small_video(tmp_path / "a.mp4", 3)
    extra = make(tmp_path)
    sources = [] if "--rig" in extra else ["--source", clip, "--source", clip]
    before = files_under(tmp_path / "out")
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), *sources, *extra,
                               "--json", tmp_path / "out" / "rig.json")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("segment: error: ") and message in lines[0], stderr
    assert files_under(tmp_path / "out") == before


def test_a_camera_output_failing_mid_run_aborts_every_cameras_outputs(tmp_path, capsys, monkeypatch):
    real_write = video.files.write_bytes
    written = []

    def disk_fills(path, data):
        if "cam1" in str(path):
            written.append(path)
            if len(written) > 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(video.files, "write_bytes", disk_fills)
    out = tmp_path / "out"
    clip = small_video(tmp_path / "a.mp4", 10)
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", clip, "--source", clip,
                               "--out", out, "--save-labels", out / "labels", "--json", out / "rig.json")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "labels folder" in lines[0] and "free some space" in lines[0], stderr
    assert files_under(out) == []  # neither camera's video nor labels, no summary, no temporaries


# ------------------------------------------------------------------------------ reconnection


class MjpegServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1 (standard library only) that can go away and come back.

    Frames are 64x48 JPEGs of a grey level that counts up, sent at about 30 per second.
    """

    def __init__(self, port: int = 0):
        self.serving = threading.Event()
        self.sent = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not owner.serving.is_set():
                    return  # going away: close without an answer
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                while owner.serving.is_set():
                    ok, jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), owner.sent % 256, np.uint8))
                    data = jpeg.tobytes()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                    except OSError:
                        return
                    owner.sent += 1
                    time.sleep(1 / 30)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.serving.set()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Go away: open connections end and new ones are refused."""
        self.serving.clear()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(60)
def test_camera_reconnects_after_its_stream_server_comes_back(tmp_path, capsys):
    server = MjpegServer()
    servers = [server]

    def go_away_and_come_back():
        deadline = time.monotonic() + 20
        while server.sent < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop()
        time.sleep(1.0)
        servers.append(MjpegServer(server.port))

    threading.Thread(target=go_away_and_come_back, daemon=True).start()
    stats = tmp_path / "rig.json"
    clip = small_video(tmp_path / "a.mp4", 20)
    try:
        code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--json", stats, "--max-frames", 60,
                                   "--source", f"http://127.0.0.1:{server.port}/stream.mjpg", "--source", clip)
    finally:
        servers[-1].stop()
    assert code == 0, stderr
    summary = json.loads(stats.read_text())
    live, recorded = summary["cameras"]["cam0"], summary["cameras"]["cam1"]
    assert live["frames_in"] == 60 and len(live["outages"]) == 1, live
    outage = live["outages"][0]
    # FFmpeg states 25 FPS for an MJPEG stream that names no rate
    assert outage["length_s"] >= 0.9 and outage["frames_lost"] == round(outage["length_s"] * 25.0)
    assert recorded["frames_out"] == 20 and recorded["dropped"] == 0  # the other camera lost nothing


def test_the_readme_rig_file_example_loads(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert example.startswith("# rig.yaml")
    front, rear, replay = load_rig_file(rig_file(tmp_path, example))
    assert (front.id, front.realtime, str(front.out)) == ("front", True, "runs/front.mp4")
    assert (rear.source, replay.loop) == ("1", True)
