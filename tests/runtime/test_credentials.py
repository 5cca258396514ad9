"""Camera passwords never leave the process: not in messages, progress, summaries, JSON or files.

A password goes in three ways (the URL on the command line, a rig file, an environment variable
through --source-env or ${NAME} in a rig file) and each run ends one way (success, connection
refused, a camera that accepts but never answers, Ctrl-C). segment.py runs as a subprocess so
that everything it and FFmpeg print is seen; the camera is tests/runtime/test_rig.py's MJPEG
server on 127.0.0.1, and FFmpeg's socket timeout bounds the silent camera's wait.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import rig
from runtime.pipeline import Camera, Processor, run_rig
from runtime.redact import redact
from runtime.video import SourceError, open_source
from tests.runtime.test_pipeline import TracingEngine
from tests.runtime.test_rig import MjpegServer
from tests.runtime.test_segment import REPO, scene_model

PASSWORD = "pw-Zq8Xv3"
USER = "operator"
# FFmpeg's socket timeout (microseconds): a camera that never answers fails after 1 s, not FFmpeg's default.
FFMPEG_OPTIONS = "timeout;1000000"


@pytest.mark.parametrize("text, shown", [
    ("rtsp://admin:SECRET@10.0.0.5/front", "rtsp://***@10.0.0.5/front"),
    ("source rtsp://admin:SECRET@10.0.0.5/front: stream cannot be opened", "source rtsp://***@10.0.0.5/front: "
     "stream cannot be opened"),
    ("http://user@h/x and rtsp://a:p@ss@h2:554/y", "http://***@h/x and rtsp://***@h2:554/y"),  # raw "@" in a password
    ("rtsp://a:p/w@h/s", "rtsp://***@h/s"),  # raw "/" in a password
    ("RTSP://a:b@h", "RTSP://***@h"),
    ("rtsp://10.0.0.5/front", "rtsp://10.0.0.5/front"),  # no user-info: unchanged
    ("dashcam.mp4 and mail user@example.com", "dashcam.mp4 and mail user@example.com"),  # no URL
])
def test_redact_by_hand(text, shown):
    assert redact(text) == shown


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SilentCamera:
    """Accepts connections on 127.0.0.1 and never answers: a camera that hangs."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = self.socket.getsockname()[1]

    def close(self):
        self.socket.close()


def url(port: int) -> str:
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/stream.mjpg"


def source_arguments(way: str, camera_url: str, tmp_path: Path) -> tuple[list[str], dict]:
    """The command-line arguments and environment that give segment.py the camera one `way`,
    with its overlay video and labels going to out/."""
    out = tmp_path / "out"
    outputs = ["--out", str(out / "overlay.mp4"), "--save-labels", str(out / "labels")]
    if way == "url":
        return ["--source", camera_url, *outputs], {}
    if way == "source-env":
        return ["--source-env", "CAM_FRONT", *outputs], {"CAM_FRONT": camera_url}
    rig = tmp_path / "inputs" / "rig.yaml"
    source, env = (camera_url, {}) if way == "rig file" else (camera_url.replace(PASSWORD, "${CAM_PASSWORD}"),
                                                             {"CAM_PASSWORD": PASSWORD})
    rig.write_text(f"cameras:\n  - id: front\n    source: {source}\n    out: {out / 'overlay.mp4'}\n"
                   f"    save_labels: {out / 'labels'}\n")
    return ["--rig", str(rig)], env


WAYS = ["url", "rig file", "source-env", "rig file ${NAME}"]


def segment(tmp_path: Path, way: str, camera_url: str, *, interrupt_when=None) -> subprocess.CompletedProcess:
    """segment.py on the camera with every output; with `interrupt_when`, Ctrl-C once it holds."""
    arguments, extra_env = source_arguments(way, camera_url, tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime.segment", "--model", str(scene_model(tmp_path / "inputs")), *arguments,
               "--json", str(out / "run.json"), "--threads", "1"]
    if interrupt_when is None:
        command += ["--max-frames", "8"]
    env = dict(os.environ, OPENCV_FFMPEG_CAPTURE_OPTIONS=FFMPEG_OPTIONS, **extra_env)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if interrupt_when is not None:
        deadline = time.monotonic() + 60
        while not interrupt_when() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=90)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def assert_no_password(tmp_path: Path, *texts: str) -> None:
    """The password is in none of the texts and in no byte of any file the run wrote."""
    for text in texts:
        assert PASSWORD not in text
    written = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "inputs").mkdir()
    return tmp_path


@pytest.mark.timeout(180)
@pytest.mark.parametrize("way", WAYS)
def test_success_shows_the_camera_without_its_password(inputs, way):
    server = MjpegServer()
    try:
        done = segment(inputs, way, url(server.port))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    summary = json.loads((inputs / "out" / "run.json").read_text())
    assert summary["source"] == f"http://***@127.0.0.1:{server.port}/stream.mjpg" and summary["frames_in"] == 8
    assert_no_password(inputs, done.stdout, done.stderr, "" if way == "url" else " ".join(done.args))
    assert len(list((inputs / "out" / "labels").glob("*.png"))) == summary["frames_out"] > 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_a_camera_that_cannot_be_opened_is_named_without_its_password(inputs, way, failure):
    silent = SilentCamera() if failure == "silent" else None
    port = silent.port if silent else free_port()
    try:
        done = segment(inputs, way, url(port))
    finally:
        if silent:
            silent.close()
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"segment: error: source http://***@127.0.0.1:{port}/stream.mjpg: stream "
                                        "cannot be opened; check the URL and that the camera is reachable"]
    assert_no_password(inputs, done.stdout, done.stderr)
    assert not [path for path in (inputs / "out").rglob("*") if path.is_file()]  # nothing written


@pytest.mark.timeout(180)
@pytest.mark.parametrize("way", ["url", "source-env"])
def test_ctrl_c_on_a_live_camera_keeps_the_password_out(inputs, way):
    server = MjpegServer()
    try:
        done = segment(inputs, way, url(server.port), interrupt_when=lambda: server.sent >= 15)
    finally:
        server.stop()
    assert done.returncode == 130, done.stderr
    assert '"interrupted": true' in (inputs / "out" / "run.json").read_text()
    assert_no_password(inputs, done.stdout, done.stderr)


def test_exceptions_of_the_library_name_no_password():
    """open_source used as a library (the benchmark does): its SourceError text and repr."""
    with pytest.raises(SourceError) as raised:
        open_source(url(free_port()))
    assert PASSWORD not in str(raised.value) and PASSWORD not in repr(raised.value)
    assert "http://***@127.0.0.1:" in str(raised.value)


@pytest.mark.parametrize("arguments, environment, message", [
    (["--source-env", "CAM_FRONT"], {}, "--source-env CAM_FRONT: environment variable CAM_FRONT is not set or empty"),
    (["--source-env", "CAM_FRONT"], {"CAM_FRONT": ""}, "environment variable CAM_FRONT is not set or empty"),
    (["--source-env", "not a name"], {}, "--source-env 'not a name': not an environment variable name"),
])
def test_bad_source_env_exits_2_with_one_line(tmp_path, arguments, environment, message):
    env = {key: value for key, value in os.environ.items() if key != "CAM_FRONT"}
    done = subprocess.run([sys.executable, "-m", "runtime.segment", "--model", str(tmp_path / "m.onnx"), *arguments],
                          cwd=REPO, env={**env, **environment}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


def test_rig_file_names_an_unset_variable_not_a_value(tmp_path, monkeypatch):
    monkeypatch.delenv("CAM_PASSWORD", raising=False)
    monkeypatch.setenv("CAM_USER", USER)
    path = tmp_path / "rig.yaml"
    path.write_text("cameras:\n  - id: front\n    source: rtsp://${CAM_USER}:${CAM_PASSWORD}@10.0.0.5/front\n")
    with pytest.raises(rig.RigError, match="camera 1: environment variable CAM_PASSWORD is not set"):
        rig.load_rig_file(path)
    monkeypatch.setenv("CAM_PASSWORD", PASSWORD)
    assert rig.load_rig_file(path)[0].source == f"rtsp://{USER}:{PASSWORD}@10.0.0.5/front"


def test_a_camera_failing_mid_run_is_recorded_without_its_password():
    """A source's own exception text (here naming its URL) goes into the camera's summary redacted."""
    def failing():
        yield 0, np.zeros((6, 8, 3), np.uint8)
        raise OSError(f"connection to {url(554)} reset")

    cameras = [Camera(failing(), name="front"), Camera(iter([(0, np.zeros((6, 8, 3), np.uint8))]), name="rear")]
    stats = run_rig(cameras, Processor(TracingEngine()), isolate=True)
    assert stats.cameras["front"].error == "OSError: connection to http://***@127.0.0.1:554/stream.mjpg reset"
