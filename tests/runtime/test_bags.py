"""Recorded drives in and out (runtime/bags.py).

Drives are written here with the libraries (an MCAP file through `mcap` with rosbags' type store,
ROS 2 sqlite3 and MCAP bags and a ROS 1 bag through `rosbags`): synthetic dashcam frames, raw and JPEG,
two topics. They are segmented through segment.py and the output bag read back with rosbags:
counts, stamps, frame ids, encodings, and labels identical to segmenting the same frames from an
image folder and to --save-labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("rosbags")
pytest.importorskip("mcap")

from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from runtime import bags  # noqa: E402
from runtime.api import Segmenter  # noqa: E402
from runtime.video import labels_path  # noqa: E402
from tests.runtime.test_api import SIZE, dashcam_frame, run_main, saved_labels  # noqa: E402
from tests.runtime.test_segment import files_under, interrupt_after_labels, scene_model  # noqa: E402

ROS2 = get_typestore(Stores.ROS2_HUMBLE)
FRONT, REAR = "/cam/front/image_raw", "/cam/rear/image_raw/compressed"


def make_header(store, stamp_ns: int, frame_id: str):
    """A std_msgs/Header of the store's ROS version (ROS 1's has a sequence number)."""
    types = store.types
    kind = types["std_msgs/msg/Header"]
    return kind(stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                frame_id=frame_id, **({"seq": 0} if "seq" in kind.__dataclass_fields__ else {}))


def image_message(store, frame: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "bgr8"):
    types = store.types
    data = {"bgr8": frame, "rgb8": frame[..., ::-1], "mono8": cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)}[encoding]
    channels = 1 if data.ndim == 2 else 3
    header = make_header(store, stamp_ns, frame_id)
    return types[bags.IMAGE](header=header, height=SIZE[0], width=SIZE[1], encoding=encoding, is_bigendian=0,
                             step=SIZE[1] * channels, data=np.ascontiguousarray(data).reshape(-1))


def jpeg_message(store, jpeg: bytes, stamp_ns: int, frame_id: str):
    return store.types[bags.COMPRESSED](header=make_header(store, stamp_ns, frame_id), format="jpeg", data=np.frombuffer(jpeg, np.uint8))


def stamp(topic: str, index: int) -> int:
    """Header stamps: 100 s + 50 ms per frame, the rear camera 7 ms later."""
    return 100 * 10**9 + index * 50_000_000 + (7_000_000 if topic == REAR else 0)


def write_mcap(path: Path, count: int, folder: Path | None = None, extra: dict | None = None) -> Path:
    """FRONT raw bgr8 and REAR JPEG, interleaved; with `folder` the same frames as <topic>/<index>
    .png / .jpg files (the JPEG bytes themselves). `extra`: {topic: (type, [messages])}."""
    from mcap.writer import Writer

    with path.open("wb") as stream:
        writer = Writer(stream, chunk_size=4096)  # several chunks, as a logger's file has: a cut loses the last
        writer.start(profile="ros2", library="test")
        types = {kind: writer.register_schema(kind, "ros2msg", ROS2.generate_msgdef(kind, ros_version=2)[0].encode())
                 for kind in (*bags.IMAGE_TYPES, *(kind for kind, _ in (extra or {}).values()))}
        front = writer.register_channel(FRONT, "cdr", types[bags.IMAGE])
        rear = writer.register_channel(REAR, "cdr", types[bags.COMPRESSED])
        for index in range(count):
            frame = dashcam_frame(index)
            jpeg = cv2.imencode(".jpg", frame[:, ::-1])[1].tobytes()
            if folder is not None:
                (folder / "front").mkdir(parents=True, exist_ok=True)
                (folder / "rear").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / "front" / f"{index:06d}.png"), frame)
                (folder / "rear" / f"{index:06d}.jpg").write_bytes(jpeg)
            for channel, topic, message, kind in (
                    (front, FRONT, image_message(ROS2, frame, stamp(FRONT, index), "front_camera"), bags.IMAGE),
                    (rear, REAR, jpeg_message(ROS2, jpeg, stamp(REAR, index), "rear_camera"), bags.COMPRESSED)):
                log_time = stamp(topic, index) + 1_000_000
                writer.add_message(channel, log_time=log_time, data=ROS2.serialize_cdr(message, kind),
                                   publish_time=log_time)
        for topic, (kind, messages) in (extra or {}).items():
            channel = writer.register_channel(topic, "cdr", types[kind])
            for number, message in enumerate(messages):
                writer.add_message(channel, log_time=number, data=ROS2.serialize_cdr(message, kind), publish_time=number)
        writer.finish()
    return path


def read_bag(path: Path) -> dict[str, list]:
    """{topic: [(log time, message)]} of a bag, through rosbags."""
    with AnyReader([path]) as reader:
        found: dict[str, list] = {connection.topic: [] for connection in reader.connections}
        for connection, log_time, raw in reader.messages():
            found[connection.topic].append((log_time, reader.deserialize(raw, connection.msgtype)))
    return found


def stamp_ns(message) -> int:
    return message.header.stamp.sec * 10**9 + message.header.stamp.nanosec


# ------------------------------------------------------------------------------- topics


def test_output_topics_sit_beside_the_input_topic():
    assert bags.output_topics("/cam/front/image_raw") == ("/cam/front/segmentation/labels",
                                                          "/cam/front/segmentation/overlay")
    assert bags.output_topics("/cam/rear/image_raw/compressed") == ("/cam/rear/segmentation/labels",
                                                                    "/cam/rear/segmentation/overlay")
    assert bags.output_topics("/image") == ("/image/segmentation/labels", "/image/segmentation/overlay")


# --------------------------------------------------------------------------- drives in/out


def test_two_topic_mcap_drive_in_and_out(tmp_path, capsys):
    drive = write_mcap(tmp_path / "drive.mcap", 6, folder=tmp_path / "frames")
    model = scene_model(tmp_path)
    out, labels, stats = tmp_path / "out" / "results.mcap", tmp_path / "labels", tmp_path / "rig.json"
    code, _, stderr = run_main(capsys, "--model", model, "--source", drive, "--topic", FRONT, "--topic", REAR,
                               "--out-bag", out, "--save-labels", labels, "--json", stats)
    assert code == 0, stderr
    for camera in ("front", "rear"):  # the same frames from image folders
        code, _, stderr = run_main(capsys, "--model", model, "--source", tmp_path / "frames" / camera,
                                   "--save-labels", tmp_path / "folder" / camera)
        assert code == 0, stderr
    written = read_bag(out)
    assert sorted(written) == ["/cam/front/segmentation/labels", "/cam/front/segmentation/overlay",
                               "/cam/rear/segmentation/labels", "/cam/rear/segmentation/overlay"]
    for camera, topic, frame_id in (("cam0", FRONT, "front_camera"), ("cam1", REAR, "rear_camera")):
        base = topic.split("/")[2]
        label_messages = written[f"/cam/{base}/segmentation/labels"]
        overlay_messages = written[f"/cam/{base}/segmentation/overlay"]
        assert len(label_messages) == len(overlay_messages) == 6
        expected = [stamp(topic, index) for index in range(6)]
        for messages in (label_messages, overlay_messages):
            assert [stamp_ns(message) for _, message in messages] == expected
            assert [log_time for log_time, _ in messages] == [value + 1_000_000 for value in expected]
            assert {message.header.frame_id for _, message in messages} == {frame_id}
        assert {(m.encoding, m.height, m.width, m.step) for _, m in label_messages} == {("mono8", *SIZE, SIZE[1])}
        assert {m.format for _, m in overlay_messages} == {"jpeg"}
        assert cv2.imdecode(overlay_messages[0][1].data, cv2.IMREAD_COLOR).shape == (*SIZE, 3)
        from_bag = [m.data.reshape(SIZE) for _, m in label_messages]
        from_folder = saved_labels(tmp_path / "folder" / base)
        assert all(np.array_equal(a, b) for a, b in zip(from_bag, from_folder, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(from_bag, saved_labels(labels / camera), strict=True))
    summary = json.loads(stats.read_text())
    assert {camera["topic"] for camera in summary["cameras"].values()} == {FRONT, REAR}
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.mcap"]  # no temporary left


def test_ros2_sqlite3_and_mcap_bag_folders_and_a_ros1_bag_with_raw_encodings(tmp_path, capsys):
    from rosbags.rosbag1 import Writer as Writer1
    from rosbags.rosbag2 import StoragePlugin
    from rosbags.rosbag2 import Writer as Writer2

    ros1 = get_typestore(Stores.ROS1_NOETIC)
    frames = [dashcam_frame(index) for index in range(4)]
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:06d}.png"), frame)
    for name, storage in (("ros2bag", StoragePlugin.SQLITE3), ("ros2mcap", StoragePlugin.MCAP)):
        with Writer2(tmp_path / name, version=9, storage_plugin=storage) as writer:
            connection = writer.add_connection("/front", bags.IMAGE, typestore=ROS2)
            for index, frame in enumerate(frames):
                writer.write(connection, index, ROS2.serialize_cdr(image_message(ROS2, frame, index, "f", "rgb8"),
                                                                   bags.IMAGE))
    with Writer1(tmp_path / "drive.bag") as writer:
        connection = writer.add_connection("/front", "sensor_msgs/msg/Image", typestore=ros1)
        for index, frame in enumerate(frames):
            message = image_message(ros1, frame, index, "f", "mono8")
            writer.write(connection, index + 1, ros1.serialize_ros1(message, "sensor_msgs/msg/Image"))
    model = scene_model(tmp_path)
    for source in ("ros2bag", "ros2mcap", "drive.bag", "frames"):  # one image topic: no --topic needed
        code, _, stderr = run_main(capsys, "--model", model, "--source", tmp_path / source,
                                   "--save-labels", tmp_path / "labels" / source)
        assert code == 0, stderr
    rgb, folder_labels = saved_labels(tmp_path / "labels" / "ros2bag"), saved_labels(tmp_path / "labels" / "frames")
    assert len(rgb) == 4 and all(np.array_equal(a, b) for a, b in zip(rgb, folder_labels))  # rgb8 turned to BGR
    assert all(np.array_equal(a, b) for a, b in zip(saved_labels(tmp_path / "labels" / "ros2mcap"), folder_labels,
                                                    strict=True))
    with Segmenter(model, threads=1) as segmenter:  # mono8 is grey on all three channels
        grey = [segmenter.segment(cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR))
                for f in frames]
    assert all(np.array_equal(a, b) for a, b in zip(saved_labels(tmp_path / "labels" / "drive.bag"), grey,
                                                    strict=True))


def test_a_drive_source_keeps_the_headers_of_the_last_frames_only(tmp_path):
    drive = write_mcap(tmp_path / "drive.mcap", bags.HEADERS_KEPT + 6)
    with bags.BagSource(drive, FRONT) as source:
        indices = [index for index, _ in source]  # nothing asks for headers, as without --out-bag
        assert indices == list(range(bags.HEADERS_KEPT + 6))
        assert source.header(5) is None  # frames 0..5 are 64 frames back: dropped
        assert source.header(6) == bags.Header(stamp(FRONT, 6), "front_camera", stamp(FRONT, 6) + 1_000_000)
        assert source.header(6) is None  # given once
        assert source.header(bags.HEADERS_KEPT + 5).stamp_ns == stamp(FRONT, bags.HEADERS_KEPT + 5)


def test_a_truncated_mcap_keeps_the_frames_before_the_cut(tmp_path, capsys):
    whole = write_mcap(tmp_path / "whole.mcap", 12)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:len(data) * 6 // 10])
    stats, labels = tmp_path / "stats.json", tmp_path / "labels"
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", cut, "--topic", FRONT,
                               "--out-bag", tmp_path / "out.mcap", "--save-labels", labels, "--json", stats)
    assert code == 0, stderr
    summary = json.loads(stats.read_text())
    assert 0 < summary["frames_out"] < 12
    assert len(read_bag(tmp_path / "out.mcap")["/cam/front/segmentation/labels"]) == summary["frames_out"]
    assert [path.name for path in files_under(labels)] == [labels_path(labels, i).name
                                                           for i in range(summary["frames_out"])]


def write_ros2_bag(path: Path, count: int, storage: str) -> Path:
    """A ROS 2 bag folder through rosbags' Writer: FRONT raw bgr8 and REAR JPEG, interleaved."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        front = writer.add_connection(FRONT, bags.IMAGE, typestore=ROS2)
        rear = writer.add_connection(REAR, bags.COMPRESSED, typestore=ROS2)
        for index in range(count):
            frame = dashcam_frame(index)
            jpeg = cv2.imencode(".jpg", frame[:, ::-1])[1].tobytes()
            for connection, topic, message, kind in (
                    (front, FRONT, image_message(ROS2, frame, stamp(FRONT, index), "front_camera"), bags.IMAGE),
                    (rear, REAR, jpeg_message(ROS2, jpeg, stamp(REAR, index), "rear_camera"), bags.COMPRESSED)):
                writer.write(connection, stamp(topic, index) + 1_000_000, ROS2.serialize_cdr(message, kind))
    return path


def storage_file(bag: Path) -> Path:
    """The one storage file of a ROS 2 bag folder."""
    return next(file for file in bag.iterdir() if file.suffix in (".db3", ".mcap"))


def damage(path: Path, how: str) -> None:
    """Cut a file at 60 % of its size, or overwrite the first sqlite table leaf page (type byte 0x0d;
    an overflow page starts with a page number, never that high) from 60 % on with 0xa5."""
    data = bytearray(path.read_bytes())
    if how == "cut":
        path.write_bytes(data[:len(data) * 6 // 10])
        return
    size = 4096  # rosbag2's and rosbags' page size
    page = next(start for start in range(len(data) * 6 // 10 // size * size, len(data), size) if data[start] == 0x0D)
    data[page:page + size] = b"\xa5" * size
    path.write_bytes(data)


@pytest.mark.parametrize("storage, how", [("mcap", "cut"), ("sqlite3", "cut"), ("sqlite3", "corrupt page")])
def test_a_damaged_ros2_bag_keeps_the_frames_before_the_damage(tmp_path, capsys, storage, how):
    # 250 frames: more than 1 MiB, so rosbags writes several MCAP chunks and a cut at 60 % keeps the first.
    whole = write_ros2_bag(tmp_path / "whole", 250, storage)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in whole.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    damage(storage_file(damaged), how)
    model = scene_model(tmp_path)
    for name in ("whole", "damaged"):
        code, _, stderr = run_main(capsys, "--model", model, "--source", tmp_path / name, "--topic", FRONT,
                                   "--save-labels", tmp_path / "labels" / name, "--json", tmp_path / f"{name}.json")
        assert code == 0, stderr
    kept = saved_labels(tmp_path / "labels" / "damaged")
    assert 0 < len(kept) < 250
    assert [path.name for path in files_under(tmp_path / "labels" / "damaged")] == \
        [labels_path(tmp_path, index).name for index in range(len(kept))]
    assert [label.tolist() for label in kept] == \
        [label.tolist() for label in saved_labels(tmp_path / "labels" / "whole")[:len(kept)]]
    summary = json.loads((tmp_path / "damaged.json").read_text())
    # metadata.yaml counted 250: the frames lost after the damage are counted corrupt
    assert (summary["frames_out"], summary["corrupt"]) == (len(kept), 250 - len(kept))


@pytest.mark.parametrize("storage, why", [("sqlite3", "(file is not a database)"),
                                          ("mcap", "(not a valid MCAP file, invalid magic")])
def test_a_ros2_bag_damaged_before_its_first_frame_is_one_line(tmp_path, capsys, storage, why):
    bag = write_ros2_bag(tmp_path / "drive", 2, storage)
    storage_file(bag).write_bytes(b"junk" * 100)
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", bag, "--topic", FRONT)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert f"source {bag}: damaged before the first message on {FRONT} {why}" in lines[0]


@pytest.mark.parametrize("metadata, why", [("rosbag2_bagfile_information: 3", "no mapping"),
                                           ("rosbag2_bagfile_information: {storage_identifier: sqlite3}",
                                            "no 'relative_file_paths'")])
def test_a_ros2_bag_with_broken_metadata_is_one_line(tmp_path, capsys, metadata, why):
    bag = write_ros2_bag(tmp_path / "drive", 2, "sqlite3")
    (bag / "metadata.yaml").write_text(metadata)
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", bag)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert f"source {bag}: metadata.yaml is not a ROS 2 bag's (" in lines[0] and why in lines[0]


def test_a_truncated_ros1_bag_is_refused_with_one_line(tmp_path, capsys):
    from rosbags.rosbag1 import Writer

    ros1 = get_typestore(Stores.ROS1_NOETIC)
    bag = tmp_path / "drive.bag"
    with Writer(bag) as writer:
        connection = writer.add_connection(FRONT, bags.IMAGE, typestore=ros1)
        for index in range(4):
            message = image_message(ros1, dashcam_frame(index), index, "f")
            writer.write(connection, index + 1, ros1.serialize_ros1(message, bags.IMAGE))
    damage(bag, "cut")  # the index at its end is gone, and rosbags reads through the index only
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", bag)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "re-index a ROS 1 bag (rosbag reindex)" in lines[0], stderr


def test_the_output_bag_is_durable(tmp_path, capsys, disk_log):
    drive = write_mcap(tmp_path / "drive.mcap", 2)
    out = tmp_path / "results.mcap"
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", drive, "--topic", REAR,
                               "--out-bag", out)
    assert code == 0, stderr
    assert disk_log.durable(out)


def string_topic():
    types = ROS2.types
    return {"/status": ("std_msgs/msg/String", [types["std_msgs/msg/String"](data="ok")])}


def float_image_topic():
    message = image_message(ROS2, dashcam_frame(0), 0, "depth")
    message = ROS2.types[bags.IMAGE](header=message.header, height=SIZE[0], width=SIZE[1], encoding="32FC1",
                                     is_bigendian=0, step=SIZE[1] * 4, data=np.zeros(SIZE[0] * SIZE[1] * 4, np.uint8))
    return {"/depth": (bags.IMAGE, [message])}


@pytest.mark.parametrize("topic, extra, message", [
    ("/cam/left/image_raw", None, f"no topic /cam/left/image_raw; it has {FRONT} (sensor_msgs/msg/Image), {REAR} "
                                  "(sensor_msgs/msg/CompressedImage); give one of its image topics with --topic"),
    ("/status", string_topic(), "topic /status carries std_msgs/msg/String, not sensor_msgs/Image or CompressedImage"),
    ("/depth", float_image_topic(), "topic /depth has encoding '32FC1', which cannot be converted to a colour image"),
    (None, None, "holds several image topics"),
])
def test_bad_drives_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, topic, extra, message):
    drive = write_mcap(tmp_path / "drive.mcap", 2, extra=extra)
    out = tmp_path / "out"
    out.mkdir()
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", drive,
                               *(("--topic", topic) if topic else ()), "--out-bag", out / "results.mcap")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segment: error: ") and message in lines[0], stderr
    assert files_under(out) == []


def test_a_failure_part_way_leaves_no_bag(tmp_path, capsys):
    drive = write_mcap(tmp_path / "drive.mcap", 4)
    truth = tmp_path / "truth"
    truth.mkdir()
    cv2.imwrite(str(labels_path(truth, 2)), np.zeros((5, 5), np.uint8))  # the wrong size: fails at frame 2
    out = tmp_path / "out"
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", drive, "--topic", FRONT,
                               "--gt-labels", truth, "--out-bag", out / "results.mcap")
    assert code == 2 and "ground truth" in stderr
    assert files_under(out) == []


def test_damaged_bag_and_topic_on_a_video_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "junk.bag").write_bytes(b"#ROSBAG V2.0\n" + bytes(100))
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", tmp_path / "junk.bag")
    assert code == 2 and "cannot be read as a bag" in stderr and len(stderr.strip().splitlines()) == 1
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "000000.png"), dashcam_frame(0))
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", folder, "--topic", FRONT)
    assert code == 2 and "--topic reads a recorded drive" in stderr


def test_a_camera_that_is_no_bag_is_stamped_from_its_frame_rate(tmp_path, capsys):
    folder = tmp_path / "frames"  # an image folder plays at 30 frames/s
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"{index:06d}.png"), dashcam_frame(index))
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--source", folder,
                               "--out-bag", tmp_path / "out.mcap")
    assert code == 0, stderr
    written = read_bag(tmp_path / "out.mcap")
    assert sorted(written) == ["/cam0/segmentation/labels", "/cam0/segmentation/overlay"]
    for messages in written.values():
        # frame i at round(i * 1e9 / 30) ns
        assert [stamp_ns(message) for _, message in messages] == [0, 33_333_333, 66_666_667]
        assert [log_time for log_time, _ in messages] == [0, 33_333_333, 66_666_667]
        assert {message.header.frame_id for _, message in messages} == {"cam0"}


def test_a_rig_file_names_each_camera_s_topic(tmp_path, capsys):
    drive = write_mcap(tmp_path / "drive.mcap", 3)
    rig_file = tmp_path / "rig.yaml"
    rig_file.write_text(f"cameras:\n  - id: rear\n    source: {drive}\n    topic: {REAR}\n"
                        f"  - id: front\n    source: {drive}\n    topic: {FRONT}\n")
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), "--rig", rig_file,
                               "--save-labels", tmp_path / "labels", "--out-bag", tmp_path / "out.mcap")
    assert code == 0, stderr
    assert [len(files_under(tmp_path / "labels" / camera)) for camera in ("rear", "front")] == [3, 3]
    assert {len(messages) for messages in read_bag(tmp_path / "out.mcap").values()} == {3}


@pytest.mark.parametrize("options, message", [
    (("--loop",), "--out-bag writes each input message once; drop --loop"),
    (("--rig", "rig.yaml"), "in a rig file give each camera its `topic:`"),
])
def test_out_bag_with_loop_and_topic_with_a_rig_file_are_refused(tmp_path, capsys, options, message):
    drive = write_mcap(tmp_path / "drive.mcap", 2)
    (tmp_path / "rig.yaml").write_text(f"cameras:\n  - id: front\n    source: {drive}\n")
    source = () if "--rig" in options else ("--source", drive)
    code, _, stderr = run_main(capsys, "--model", scene_model(tmp_path), *source, "--topic", FRONT,
                               *(tmp_path / o if o.endswith(".yaml") else o for o in options),
                               "--out-bag", tmp_path / "out.mcap")
    assert code == 2 and message in stderr
    assert not (tmp_path / "out.mcap").exists()


def test_ctrl_c_keeps_a_complete_bag_of_the_frames_done(tmp_path):
    drive = write_mcap(tmp_path / "drive.mcap", 200)  # 20 frames/s: ten seconds in real time
    out, stats, labels = tmp_path / "out" / "results.mcap", tmp_path / "stats.json", tmp_path / "labels"
    returncode, _, stderr = interrupt_after_labels(
        ["--model", scene_model(tmp_path), "--source", drive, "--topic", FRONT, "--out-bag", out,
         "--save-labels", labels, "--json", stats, "--realtime", "--no-progress"], labels)
    assert returncode == 130, stderr
    summary = json.loads(stats.read_text())
    assert summary["interrupted"] is True and 3 <= summary["frames_out"] < 200
    written = read_bag(out)
    assert {len(messages) for messages in written.values()} == {summary["frames_out"]}
    assert [m.data.reshape(SIZE).tolist() for _, m in written["/cam/front/segmentation/labels"]] == \
        [label.tolist() for label in saved_labels(labels)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.mcap"]
