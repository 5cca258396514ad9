"""Recorded drives as sources and outputs: ROS 1 bags, ROS 2 bag folders (sqlite3 or MCAP
storage) and MCAP files in; one MCAP file of label and overlay topics out.

Reading goes through maintained pure-Python libraries, no ROS installation, and streams where the
format allows, so a drive cut short (a logger that lost power) or damaged part way still gives
every frame before the damage, as a truncated video does: MCAP files, and a ROS 2 folder's MCAP
storage files, record by record with the `mcap` reader; a ROS 2 folder's sqlite3 storage files row
by row with an SQL query (Python's sqlite3); the folder's topics and counts come from its
metadata.yaml. ROS 1 bags and ROS 2 folders with rosbag2 compression are read with `rosbags`,
which needs the bag's index: rosbags has no reindex or chunk scan, so a ROS 1 bag cut short (its
index is at the end) is refused with one line that says to run `rosbag reindex` first. Messages
are decoded with `rosbags`' ROS 2 type store; sensor_msgs/Image in any encoding rosbags-image
converts (bgr8, rgb8, mono8, bayer, ...) and sensor_msgs/CompressedImage (JPEG, PNG; decoded as
the image folder source decodes files).

The output is one MCAP file (ros2 profile, CDR messages, the message definitions embedded), which
Foxglove and RViz open beside the original drive: per camera `.../segmentation/labels`
(sensor_msgs/Image, mono8 trainIds) and `.../segmentation/overlay` (sensor_msgs/CompressedImage,
JPEG), each message with the header stamp and frame id of the input message it was made from.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path, PurePath
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np

from runtime import files
from runtime.video import (DEFAULT_FPS, PartFile, Sink, SinkError, Source, SourceError, existing_kind,
                           is_truncated_jpeg, make_output_folder, write_failure)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)
BAG_SUFFIXES = (".mcap", ".bag")
# The overlay topic's JPEG quality: the overlay is for looking at; the labels are lossless.
OVERLAY_JPEG_QUALITY = 90
# Input headers a drive source keeps for the output bag: more than the frames one camera can hold
# between decode and encode (four queues of at most 4 frames, and one per stage), so every frame
# written finds its header, while a run without --out-bag, or one that drops frames, keeps no more.
HEADERS_KEPT = 64


def is_bag(path: Path) -> bool:
    """A ROS 1 bag or MCAP file, or a ROS 2 bag folder (one with metadata.yaml)."""
    return path.suffix.lower() in BAG_SUFFIXES and path.is_file() or (path / "metadata.yaml").is_file()


def output_topics(topic: str) -> tuple[str, str]:
    """(labels, overlay) topics beside an input image topic: its last name (and a `compressed`
    transport suffix) replaced by `segmentation/...`, e.g. /cam/front/image_raw ->
    /cam/front/segmentation/labels; a topic of one name keeps it (/image -> /image/segmentation/...)."""
    base = topic.rstrip("/").removesuffix("/compressed")
    if base.count("/") > 1:
        base = base.rsplit("/", 1)[0]
    return f"{base}/segmentation/labels", f"{base}/segmentation/overlay"


class Header(NamedTuple):
    """What an output message takes from its input message."""

    stamp_ns: int  # header.stamp
    frame_id: str
    log_time_ns: int  # when the logger received it


def _typestore():
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError:  # an install without the runtime extra
        raise SourceError("recorded drives need rosbags, rosbags-image and mcap; pip install '.[runtime]'") from None
    return get_typestore(Stores.ROS2_HUMBLE)


def _describe(topics: dict[str, str]) -> str:
    return ", ".join(f"{topic} ({kind})" for topic, kind in sorted(topics.items())) or "no topics"


class BagSource(Source):
    """The image messages of one topic of a drive, in the order they were logged.

    Indices count the topic's messages, so a message that cannot be decoded leaves a gap; the
    header (stamp, frame id) and log time of the last HEADERS_KEPT frames are kept for the output
    bag (`header`).
    Reading stops at damage (a truncated or corrupt file): the frames before it are kept, and the
    messages the drive counted after it (a ROS 2 folder's metadata.yaml, an MCAP summary) are
    counted as corrupt frames.
    """

    def __init__(self, path: Path, topic: str | None):
        self.spec = str(path)
        self.path = path
        self._store = _typestore()
        self._headers: dict[int, Header] = {}
        self._reader = _reader(path)
        try:
            self.topic = self._choose_topic(self._reader.topics, topic)
        except SourceError:
            self._reader.close()
            raise
        self.frame_count, span_ns = self._reader.count(self.topic)
        self.fps = (self.frame_count - 1) * 1e9 / span_ns if self.frame_count and span_ns else DEFAULT_FPS
        super().__init__()

    def _choose_topic(self, topics: dict[str, str], topic: str | None) -> str:
        images = {name: kind for name, kind in topics.items() if kind in IMAGE_TYPES}
        where = f"source {self.path}"
        if topic is None:
            if len(images) == 1:
                return next(iter(images))
            if not images:
                raise SourceError(f"{where}: holds no sensor_msgs/Image or CompressedImage topic (it has "
                                  f"{_describe(topics)}); record the camera images")
            raise SourceError(f"{where}: holds several image topics ({_describe(images)}); pick one with --topic "
                              "(several --topic make a rig)")
        if topic not in topics:
            raise SourceError(f"{where}: no topic {topic}; it has {_describe(topics)}; give one of its image topics "
                              "with --topic")
        if topics[topic] not in IMAGE_TYPES:
            raise SourceError(f"{where}: topic {topic} carries {topics[topic]}, not sensor_msgs/Image or "
                              f"CompressedImage; give an image topic ({_describe(images)})")
        return topic

    def header(self, index: int) -> Header | None:
        """The input header of frame `index`, once: the output bag asks for each frame it writes."""
        return self._headers.pop(index, None)

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        previous = -1
        try:
            for index, (log_time, kind, message) in enumerate(self._reader.messages(self.topic, self._store)):
                frame = None if message is None else self._image(kind, message)
                accepted = self._accept(previous, index, frame)
                previous = index
                if accepted:
                    stamp = message.header.stamp
                    self._headers[index] = Header(stamp.sec * 1_000_000_000 + stamp.nanosec,
                                                  message.header.frame_id, log_time)
                    if len(self._headers) > HEADERS_KEPT:  # dicts keep insertion order: the oldest goes
                        self._headers.pop(next(iter(self._headers)), None)
                    yield index, frame
        except _Damage as exc:  # the frames before it stand; those the drive counted after it are corrupt
            if previous < 0:
                self.close()
                raise SourceError(f"source {self.path}: damaged before the first message on {self.topic} "
                                  f"({_one_line(exc.__cause__)}); check the copy") from None
            if self.frame_count is not None:
                self.corrupt_frames += max(self.frame_count - 1 - previous, 0)

    def _image(self, kind: str, message) -> np.ndarray | None:
        """The BGR frame of a message; None for one that cannot be decoded (counted as corrupt).
        An encoding that no library converts is the topic's, not the message's: a SourceError."""
        if kind == COMPRESSED:
            data = np.asarray(message.data, np.uint8)
            if "jpeg" in message.format.lower() and is_truncated_jpeg(data.tobytes()):
                return None
            return cv2.imdecode(data, cv2.IMREAD_COLOR)
        from rosbags.image import ImageConversionError, ImageFormatError, message_to_cvimage

        try:
            frame = message_to_cvimage(message, "bgr8")
        except (ImageFormatError, ImageConversionError):
            raise SourceError(f"source {self.path}: topic {self.topic} has encoding {message.encoding!r}, which "
                              "cannot be converted to a colour image; record bgr8, rgb8, mono8, bayer or "
                              "compressed images") from None
        except (ValueError, TypeError, cv2.error):  # data shorter than its size says, a size the encoding forbids
            return None
        return np.ascontiguousarray(frame) if frame.dtype == np.uint8 else None

    def close(self) -> None:
        self._reader.close()


class _Damage(Exception):
    """A storage file breaks off part way (cut short, a corrupt record or page): reading stops."""


def _reader(path: Path):
    """The reader of a drive: MCAP files and uncompressed ROS 2 bag folders are streamed, so damage
    part way keeps the frames before it; ROS 1 bags and compressed ROS 2 folders go through rosbags."""
    if path.is_file() and path.suffix.lower() == ".mcap":
        return _McapFile(path)
    if path.is_dir():
        metadata = _ros2_metadata(path)
        if (metadata.get("compression_mode") or "none").lower() == "none":
            return _Ros2Folder(path, metadata)
    return _RosbagsFile(path)


def _ros2_metadata(path: Path) -> dict:
    import yaml

    try:
        metadata = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError) as exc:
        raise _bad_metadata(path, exc) from None
    if not isinstance(metadata, dict):
        raise _bad_metadata(path, TypeError("rosbag2_bagfile_information is no mapping"))
    return metadata


def _bad_metadata(path: Path, exc: Exception) -> SourceError:
    why = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else _one_line(exc)
    return SourceError(f"source {path}: metadata.yaml is not a ROS 2 bag's ({why}); check the copy or rebuild it "
                       "with ros2 bag reindex")


def _one_line(exc: BaseException) -> str:
    """A library's error text on one line; its type where it has none (a bare EOFError)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _deserialize(store, data: bytes, kind: str):
    """A CDR message, or None for a damaged one (counted as a corrupt frame)."""
    try:
        return store.deserialize_cdr(data, kind)
    except Exception:  # rosbags raises whatever the bytes lead to
        return None


def _not_cdr(path: Path, topic: str) -> SourceError:
    return SourceError(f"source {path}: topic {topic} is not ROS 2 (CDR) encoded; convert the drive to a ROS 2 "
                       "MCAP or bag")


class _RosbagsFile:
    """A ROS 1 bag or compressed ROS 2 bag folder through rosbags' AnyReader, which needs the bag's
    index (a ROS 1 bag's is at its end): a bag cut short or with a damaged index is refused."""

    def __init__(self, path: Path):
        from rosbags.highlevel import AnyReader

        self._reader = AnyReader([path])
        try:
            self._reader.open()
        except Exception as exc:  # rosbags raises its own error types per format
            raise SourceError(f"source {path}: cannot be read as a bag ({_one_line(exc)}); the file is "
                              "damaged or truncated: re-index a ROS 1 bag (rosbag reindex) or check the copy") from None
        self.topics = {connection.topic: connection.msgtype for connection in self._reader.connections}

    def count(self, topic: str) -> tuple[int | None, int]:
        """(messages on the topic, the drive's time span in ns)."""
        count = sum(c.msgcount for c in self._reader.connections if c.topic == topic)
        return count, self._reader.duration

    def messages(self, topic: str, store) -> Iterator[tuple[int, str, object]]:
        connections = [c for c in self._reader.connections if c.topic == topic]
        try:
            for connection, log_time, raw in self._reader.messages(connections=connections):
                yield log_time, connection.msgtype, self._reader.deserialize(raw, connection.msgtype)
        except Exception as exc:  # damage part way in the messages the index points to
            raise _Damage from exc

    def close(self) -> None:
        self._reader.close()


class _Ros2Folder:
    """A ROS 2 bag folder without rosbag2 compression: topics, counts and span from metadata.yaml;
    the messages streamed from its storage files in order, MCAP as an MCAP file is, sqlite3 by
    row, so a storage file cut short or damaged keeps the messages before the damage."""

    def __init__(self, path: Path, metadata: dict):
        self.path = path
        try:
            self._storage = metadata["storage_identifier"]
            self._files = [path / PurePath(name).name for name in metadata["relative_file_paths"]]
            topics = [entry["topic_metadata"] | {"count": entry["message_count"]}
                      for entry in metadata["topics_with_message_count"]]
            self._span = metadata["duration"]["nanoseconds"]
            self.topics = {topic["name"]: topic["type"] for topic in topics}
            self._formats = {topic["name"]: topic["serialization_format"] for topic in topics}
            self._counts = {topic["name"]: topic["count"] for topic in topics}
        except (KeyError, TypeError) as exc:
            raise _bad_metadata(path, exc) from None
        if self._storage not in ("mcap", "sqlite3"):
            raise SourceError(f"source {path}: storage {self._storage!r} is not read; record sqlite3 or mcap")
        missing = [file.name for file in self._files if not file.is_file()]
        if missing:
            raise SourceError(f"source {path}: storage files missing: {', '.join(missing)}; check the copy")

    def count(self, topic: str) -> tuple[int | None, int]:
        """(messages on the topic, the drive's time span in ns), as the recorder counted them."""
        return self._counts[topic], self._span

    def messages(self, topic: str, store) -> Iterator[tuple[int, str, object]]:
        if self._formats[topic] != "cdr":
            raise _not_cdr(self.path, topic)
        for file in self._files:
            if self._storage == "sqlite3":
                yield from _sqlite3_messages(file, topic, self.topics[topic], store)
                continue
            try:
                stream = file.open("rb")
            except OSError as exc:
                raise SourceError(f"source {self.path}: {file.name} cannot be read ({exc.strerror}); check its "
                                  "permissions") from None
            with stream:
                yield from _mcap_messages(self.path, stream, topic, store)

    def close(self) -> None:
        """Each storage file is open only while it is read."""


def _sqlite3_messages(path: Path, topic: str, kind: str, store) -> Iterator[tuple[int, str, object]]:
    """The messages of a sqlite3 storage file on `topic`, in row order (as logged), read with an SQL
    query: rows stream page by page, so a corrupt page ends them there. A file cut short is shorter
    than its header says, which SQLite refuses unless writable_schema is on; on this read-only
    (immutable) connection nothing can be written, and the rows before the cut are read."""
    import sqlite3

    try:
        # The source reads its first frame where it opens, the rest in its decode thread: one at a time.
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise _Damage from exc
    try:
        connection.execute("PRAGMA writable_schema = ON")
        ids = [row[0] for row in connection.execute("SELECT id FROM topics WHERE name = ?", (topic,))]
        rows = connection.execute(f"SELECT timestamp, data FROM messages WHERE topic_id IN "
                                  f"({', '.join('?' * len(ids))}) ORDER BY id", ids)
        for log_time, data in rows:
            yield log_time, kind, _deserialize(store, data, kind)
    except sqlite3.DatabaseError as exc:
        raise _Damage from exc
    finally:
        connection.close()


def _mcap_records(stream, topic: str | None):
    """(schema, channel, message) of an MCAP stream as written, record by record; _Damage where
    it breaks off, after the records before."""
    from mcap.reader import NonSeekingReader

    stream.seek(0)
    try:
        yield from NonSeekingReader(stream).iter_messages(topics=None if topic is None else [topic],
                                                          log_time_order=False)
    except Exception as exc:  # the mcap library raises what the cut bytes lead to
        raise _Damage from exc


def _mcap_messages(path: Path, stream, topic: str, store) -> Iterator[tuple[int, str, object]]:
    """The messages on `topic` of an MCAP stream of the drive at `path`, decoded."""
    for schema, channel, message in _mcap_records(stream, topic):
        if schema is None or channel.message_encoding != "cdr":
            raise _not_cdr(path, topic)
        yield message.log_time, schema.name, _deserialize(store, message.data, schema.name)


class _McapFile:
    """An MCAP file read with the `mcap` library: the summary at its end lists the topics; a file
    without one (cut short) is scanned instead, and its messages are read up to the cut."""

    def __init__(self, path: Path):
        from mcap.reader import make_reader

        self.path = path
        try:
            self._file = path.open("rb")
        except OSError as exc:
            raise SourceError(f"source {path}: cannot be read ({exc.strerror}); check its permissions") from None
        try:
            self._summary = make_reader(self._file).get_summary()
        except Exception:  # no footer: the file was cut short
            self._summary = None
        if self._summary is not None:
            schemas = self._summary.schemas
            self.topics = {channel.topic: schemas[channel.schema_id].name if channel.schema_id in schemas else ""
                           for channel in self._summary.channels.values()}
        else:
            self.topics = {}
            try:
                for schema, channel, _ in _mcap_records(self._file, None):
                    self.topics.setdefault(channel.topic, schema.name if schema is not None else "")
            except _Damage:  # the topics before the cut
                pass
        if not self.topics:
            self.close()
            raise SourceError(f"source {path}: not an MCAP file with messages (damaged, or empty); check the file")

    def count(self, topic: str) -> tuple[int | None, int]:
        """(messages on the topic, the drive's time span in ns), where the summary tells them."""
        statistics = self._summary.statistics if self._summary is not None else None
        if statistics is None:
            return None, 0
        channels = [cid for cid, channel in self._summary.channels.items() if channel.topic == topic]
        count = sum(statistics.channel_message_counts.get(cid, 0) for cid in channels)
        return count, statistics.message_end_time - statistics.message_start_time

    def messages(self, topic: str, store) -> Iterator[tuple[int, str, object]]:
        return _mcap_messages(self.path, self._file, topic, store)

    def close(self) -> None:
        self._file.close()


class ImageMcap:
    """An MCAP file of sensor_msgs images being written to `stream`: ros2 profile, CDR messages,
    the message definitions embedded (what Foxglove and rosbags need to decode them). The one
    writer of the output bag and of the benchmark's recorded drive. Threads may write at once:
    encoding runs beside the others, only the append to the file is one at a time."""

    def __init__(self, stream):
        from mcap.writer import CompressionType, Writer

        self.store = _typestore()
        # LZ4 chunks: label maps shrink many times over, at a fraction of zstd's time.
        self._writer = Writer(stream, compression=CompressionType.LZ4)
        self._writer.start(profile="ros2", library="stpg runtime/bags.py")
        self._lock = threading.Lock()
        self._schemas = {kind: self._writer.register_schema(
            kind, "ros2msg", self.store.generate_msgdef(kind, ros_version=2)[0].encode()) for kind in IMAGE_TYPES}

    def channel(self, topic: str, kind: str) -> int:
        with self._lock:
            return self._writer.register_channel(topic, "cdr", self._schemas[kind])

    def header(self, stamp_ns: int, frame_id: str):
        types = self.store.types
        stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def labels(self, channel: int, header, labels: np.ndarray, log_time_ns: int) -> None:
        """A uint8 label map as a mono8 Image."""
        height, width = labels.shape
        self._write(channel, IMAGE, log_time_ns, header=header, height=height, width=width, encoding="mono8",
                    is_bigendian=0, step=width, data=np.ascontiguousarray(labels).reshape(-1))

    def jpeg(self, channel: int, header, image_bgr: np.ndarray, log_time_ns: int,
             quality: int = OVERLAY_JPEG_QUALITY) -> None:
        """A BGR image as a JPEG CompressedImage."""
        ok, jpeg = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        self._write(channel, COMPRESSED, log_time_ns, header=header, format="jpeg", data=jpeg.reshape(-1))

    def _write(self, channel: int, kind: str, log_time_ns: int, **fields) -> None:
        data = self.store.serialize_cdr(self.store.types[kind](**fields), kind)
        with self._lock:
            self._writer.add_message(channel, log_time=log_time_ns, data=data, publish_time=log_time_ns)

    def finish(self) -> None:
        """Write the summary and footer (the stream stays open)."""
        self._writer.finish()


class BagWriter:
    """The output bag: one MCAP file that the sinks of every camera write into (`sink`).

    Written to a PartFile beside the target (as VideoSink is) and published
    (runtime.files.publish) when the last camera's sink closes; an abort of any camera's sink
    removes it, so the target is a complete bag or untouched.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mcap" or existing_kind(self.path, "output bag", SinkError) == "folder":
            raise SinkError(f"output bag {self.path}: is not a file name ending in .mcap; give one such as "
                            "results.mcap")
        make_output_folder(self.path.parent, "output bag", self.path)
        self._part = PartFile(self.path, "output bag", ".mcap")
        self._lock = threading.Lock()  # every camera's sink closes or aborts through here
        self._sinks = self._closed = 0
        self._done = False
        self._file = open(self._part.name, "wb")
        try:
            self.mcap = ImageMcap(self._file)
        except (SourceError, ImportError):
            self._abort()
            raise SinkError("--out-bag needs rosbags and mcap; pip install '.[runtime]'") from None

    def sink(self, camera_id: str, topic: str | None, header: Callable[[int], Header | None], fps: float) -> "BagSink":
        """The sink of one camera; `topic` is its input topic (None for a camera that is no bag:
        its outputs go under /<camera id>/, stamped at `fps` from zero)."""
        labels_topic, overlay_topic = output_topics(topic or f"/{camera_id}/image")
        channels = (self.mcap.channel(labels_topic, IMAGE), self.mcap.channel(overlay_topic, COMPRESSED))
        with self._lock:
            self._sinks += 1
        return BagSink(self, channels, camera_id, header, fps)

    def write(self, channels: tuple[int, int], found: Header, labels: np.ndarray, overlay: np.ndarray) -> None:
        header = self.mcap.header(found.stamp_ns, found.frame_id)
        try:
            self.mcap.labels(channels[0], header, labels, found.log_time_ns)
            self.mcap.jpeg(channels[1], header, overlay, found.log_time_ns)
        except OSError as exc:
            raise write_failure("output bag", self.path, exc) from None

    def close_sink(self) -> None:
        """One camera is done; the last one finishes and publishes the file."""
        with self._lock:
            self._closed += 1
            if self._closed < self._sinks or self._done:
                return
            try:
                self.mcap.finish()
                self._file.close()
                files.publish(self._part.name, self.path)
            except OSError as exc:
                self._abort()
                raise write_failure("output bag", self.path, exc) from None
            except BaseException:
                self._abort()
                raise
            self._done = True
            self._part.unlock()

    def abort(self) -> None:
        with self._lock:
            self._abort()

    def _abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        self._part.remove()


class BagSink(Sink):
    """One camera's labels (mono8 Image) and overlay (JPEG CompressedImage) into a BagWriter."""

    needs_overlay = True
    needs_labels = True

    def __init__(self, writer: BagWriter, channels: tuple[int, int], camera_id: str,
                 header: Callable[[int], Header | None], fps: float):
        self.writer, self.channels, self.camera_id = writer, channels, camera_id
        self._header, self._fps = header, fps or DEFAULT_FPS

    def write(self, index: int, overlay: np.ndarray | None, labels: np.ndarray | None) -> None:
        found = self._header(index)
        if found is None:  # a camera that is no bag: stamps from its frame rate
            stamp = round(index * 1e9 / self._fps)
            found = Header(stamp, self.camera_id, stamp)
        self.writer.write(self.channels, found, labels, overlay)

    def close(self) -> None:
        self.writer.close_sink()

    def abort(self) -> None:
        self.writer.abort()
