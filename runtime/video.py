"""Frame sources (video file, camera, stream URL, image folder; recorded drives in runtime/bags.py) and output sinks.

Sources yield `(index, frame_bgr)`; a frame that fails to decode in the middle of a file is
skipped and counted instead of ending the run, because dashcam recordings are routinely
damaged. Sinks write to a temporary name beside the output and rename it on `close()`, so an
interrupted or failed run never leaves a half-written file under the requested name; a write
that fails part way (disk full, read-only) is a SinkError, not a codec traceback.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
from fractions import Fraction
from pathlib import Path
from typing import Iterator

# FFmpeg's and OpenCV's warnings (e.g. "moov atom not found") would bury our one-line error
# messages; corrupt frames are counted and reported by the source instead. The FFmpeg level
# must be set before the first capture loads the backend. An explicit user setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from runtime import files  # noqa: E402
from runtime.redact import redact  # noqa: E402

if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_FPS = 30.0
# Consecutive failed reads before the known end after which the file is taken as truncated.
MAX_CONSECUTIVE_FAILURES = 16
# An output folder with less free space than this is refused before any work: a full disk
# would otherwise be found only when the first frame or the final summary is written.
MIN_FREE_BYTES = 1 << 20


class SourceError(ValueError):
    """The input cannot be read; the message names it and what to check."""


class SinkError(ValueError):
    """The output cannot be written; the message names it and what to check."""


class Source:
    """Common surface of every source: iterate once for `(index, frame_bgr)` uint8 HxWx3 frames.

    `size` is (width, height) as OpenCV and video containers state it, taken from the first
    decodable frame (opening fails if there is none); in a video a frame of another size is
    damaged, while an image folder's frames may each have their own (`one_size`).
    `frame_count` is None for live and unknown-length inputs. Indices follow the stream, so a
    skipped corrupt frame leaves a gap and later frames keep the index their ground truth is
    named after; `corrupt_files` names the skipped files where there are files to name.
    """

    spec: str
    fps: float
    frame_count: int | None
    is_live: bool = False
    one_size: bool = True

    def __init__(self):
        self.corrupt_frames = 0
        self.corrupt_files: list[str] = []
        self.size: tuple[int, int] | None = None
        self._frames = self._decode()
        self._first = next(self._frames, None)
        if self._first is None:
            self.close()
            raise SourceError(f"source {redact(self.spec)}: no frame could be decoded; check that it plays")

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(index, frame)` for every readable frame, counting the unreadable ones."""
        raise NotImplementedError

    def _accept(self, previous: int, index: int, frame) -> bool:
        """Count the frames skipped since `previous`; keep `frame` if it is a proper BGR frame."""
        self.corrupt_frames += index - previous - 1
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            self.corrupt_frames += 1
            return False
        if self.size is None:
            self.size = (frame.shape[1], frame.shape[0])
        if self.one_size and (frame.shape[1], frame.shape[0]) != self.size:
            self.corrupt_frames += 1
            return False
        return True

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._first is None:
            raise RuntimeError(f"source {redact(self.spec)} can be iterated only once")
        first, self._first = self._first, None
        yield first
        yield from self._frames

    def close(self) -> None:
        """Release the device or file handle."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CaptureSource(Source):
    """A video file, camera or stream URL read through OpenCV's VideoCapture."""

    def __init__(self, spec: str, capture: cv2.VideoCapture, *, is_live: bool):
        self.spec = spec
        self.is_live = is_live
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        # Files with a known rate take indices from frame timestamps, so a frame the decoder
        # drops silently still shows up as a gap; live inputs are simply numbered.
        self._timestamped = not is_live and bool(fps and fps > 0 and np.isfinite(fps))
        self.fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else DEFAULT_FPS
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = None if is_live or count <= 0 else count
        super().__init__()

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        previous, failures = -1, 0
        origin_ms = None  # timestamp of index 0; containers may start at a non-zero time
        while True:
            ok, frame = self._capture.read()
            if not ok:
                failures += 1
                frames_remain = self.is_live or (
                    self.frame_count is not None and previous + failures < self.frame_count)
                if frames_remain and failures < MAX_CONSECUTIVE_FAILURES:
                    continue
                return
            if self._timestamped:
                stamp_ms = self._capture.get(cv2.CAP_PROP_POS_MSEC)
                if origin_ms is None:
                    origin_ms = stamp_ms - failures * 1000.0 / self.fps
                index = max(previous + 1, int(round((stamp_ms - origin_ms) * self.fps / 1000.0)))
            else:
                index = previous + 1 + failures
            accepted = self._accept(previous, index, frame)
            previous, failures = index, 0
            if accepted:
                yield index, frame

    def close(self) -> None:
        self._capture.release()


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG cut short: no end-of-image marker (FF D9) after its last start-of-scan (FF DA).

    libjpeg decodes such a file with the missing part grey and only a warning that names no
    file, so the cut is found from the bytes. Markers cannot occur inside the compressed data
    (FF is stuffed as FF 00 there), and a thumbnail's EOI comes before the main scan.
    """
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


class ImageFolderSource(Source):
    """Sorted *.png / *.jpg files of one folder, played as a video at `fps`; frames of any size."""

    one_size = False

    def __init__(self, folder: Path, fps: float = DEFAULT_FPS):
        self.spec = str(folder)
        self.fps = float(fps)
        self._paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._paths:
            raise SourceError(f"source {folder}: folder holds no .png or .jpg images; check the path")
        self.frame_count = len(self._paths)
        super().__init__()

    def _decode(self) -> Iterator[tuple[int, np.ndarray]]:
        previous = -1
        for index, path in enumerate(self._paths):
            frame = self._read(path)
            if frame is None:
                self.corrupt_files.append(path.name)
                continue
            accepted = self._accept(previous, index, frame)
            previous = index
            if accepted:
                yield index, frame
        self.corrupt_frames += len(self._paths) - 1 - previous

    @staticmethod
    def _read(path: Path) -> np.ndarray | None:
        """The BGR frame, or None for a file that cannot be read, is no image or is cut short."""
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if path.suffix.lower() in (".jpg", ".jpeg") and is_truncated_jpeg(data):
            return None
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def open_source(spec: str | int | os.PathLike, *, folder_fps: float = DEFAULT_FPS, topic: str | None = None) -> Source:
    """Open a camera index ("0"), an rtsp:// / http(s):// URL, an image folder, a video file or a
    recorded drive (runtime.bags; `topic` picks its camera). Messages name a URL without its user
    and password (runtime.redact)."""
    text = str(spec)
    if topic is not None and (text.isdigit() or "://" in text):
        raise _topic_without_drive(text)
    if text.isdigit():
        capture = cv2.VideoCapture(int(text))
        if not capture.isOpened():
            raise SourceError(f"source {text}: camera {text} cannot be opened; check it is connected and not in use")
        return CaptureSource(text, capture, is_live=True)
    if "://" in text:
        capture = cv2.VideoCapture(text, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise SourceError(f"source {redact(text)}: stream cannot be opened; check the URL and that the camera is "
                              "reachable")
        return CaptureSource(text, capture, is_live=True)
    path = Path(text)
    kind = existing_kind(path, "source", SourceError)
    if kind is not None:
        from runtime import bags

        if bags.is_bag(path):
            return bags.BagSource(path, topic)
        if topic is not None:
            raise _topic_without_drive(text)
    if kind == "folder":
        return ImageFolderSource(path, folder_fps)
    if kind is None:
        raise SourceError(f"source {text}: no such file or folder; check the path")
    if not os.access(path, os.R_OK):
        raise SourceError(f"source {text}: file is not readable; check its permissions")
    capture = cv2.VideoCapture(text, cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise SourceError(
            f"source {text}: cannot be opened as a video (unsupported, damaged or truncated file); "
            "check that it plays")
    return CaptureSource(text, capture, is_live=False)


def _topic_without_drive(text: str) -> SourceError:
    return SourceError(f"source {redact(text)}: --topic reads a recorded drive (.mcap, .bag or a ROS 2 bag folder), "
                       "this is none; drop --topic or give the drive")


class Sink:
    """Where finished frames go. `needs_overlay` / `needs_labels` tell the pipeline what to make."""

    needs_overlay = False
    needs_labels = False

    def write(self, index: int, overlay: np.ndarray | None, labels: np.ndarray | None) -> None:
        """Take one finished frame: the BGR overlay and/or the frame-size uint8 label map."""

    def close(self) -> None:
        """Finish the output and give it its final name."""

    def abort(self) -> None:
        """Remove whatever was written; the output is left as before the run."""


class NullSink(Sink):
    """Run without writing anything (benchmarks, dry runs)."""


def existing_kind(path: Path, what: str, error: type[ValueError]) -> str | None:
    """'folder', 'file' or None (nothing there); a name the system refuses (too long, no access
    to a parent) is `error`, one line naming `what`, instead of an OSError from a mere test."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror}; check the path") from None
    return "folder" if stat.S_ISDIR(mode) else "file"


def write_failure(what: str, target: Path, exc: OSError) -> SinkError:
    """The one line for an output whose writing failed part way (disk full, read-only, ...)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return SinkError(f"{what} {target}: writing failed ({exc.strerror or exc}); "
                     f"{'free some space or choose another location' if full else 'choose a writable location'}")


def make_output_folder(folder: Path, what: str, target: Path) -> None:
    """Create `folder` (and parents) for `target`, or fail with a line naming the obstacle."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise SinkError(f"{what} {target}: {blocker} is a file, not a folder; "
                            "choose another location") from None
        raise SinkError(f"{what} {target}: cannot create folder {folder} ({exc.strerror}); "
                        "choose a writable location") from None


def temp_file_in(folder: Path, what: str, target: Path, suffix: str = ".tmp") -> str:
    """A fresh hidden file in `folder` (runtime.files.create_temp); an unwritable or full folder is a SinkError."""
    try:
        temp = files.create_temp(folder, suffix)
    except OSError as exc:
        raise SinkError(f"{what} {target}: folder {folder} is not writable ({exc.strerror}); "
                        "choose a writable location") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        temp.unlink()
        raise SinkError(f"{what} {target}: the disk of {folder} is nearly full ({free // 1024} KiB free); "
                        "free some space or choose another location")
    return str(temp)


def remove_stale_temporaries(folder: Path, suffix: str) -> None:
    """Delete the temporaries named `.*<suffix>` that no live writer holds locked: the leftovers
    of a run killed with SIGKILL, which had no chance to remove its own."""
    for temp in folder.glob(f".*{suffix}"):
        try:
            fd = os.open(temp, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a running writer holds it
            continue
        else:
            temp.unlink(missing_ok=True)
        finally:
            os.close(fd)


def h264_encoder() -> str | None:
    """Name of a PyAV H.264 encoder usable here, or None without PyAV or any such encoder."""
    try:
        import av
    except ImportError:
        return None
    for name in ("libx264", "h264", "libopenh264"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises different types across versions for an unknown codec
            continue
        return name
    return None


class PartFile:
    """The temporary file an output is written to before its rename: beside it, named after it
    and locked while written, so that the next run for the same output can tell a killed run's
    leftover (removed here) from a live writer's file."""

    def __init__(self, path: Path, what: str, extension: str):
        suffix = f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]}.part{extension}"
        remove_stale_temporaries(path.parent, suffix)
        self.name = temp_file_in(path.parent, what, path, suffix)
        self._lock: int | None = os.open(self.name, os.O_RDONLY)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def remove(self) -> None:
        """Delete it (the output was aborted) and let go of the lock."""
        if os.path.exists(self.name):
            os.unlink(self.name)
        self.unlock()

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


class VideoSink(Sink):
    """MP4 overlay video: H.264 through PyAV where available, else OpenCV's MPEG-4 part 2.

    4:2:0 video needs even dimensions, so an odd-sized frame is padded by one edge row/column;
    a frame of another size than `size` (an image folder of mixed sizes) is scaled to it. It is
    written to a PartFile.
    """

    needs_overlay = True

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], *, crf: int = 23,
                 preset: str = "veryfast"):
        self.path = Path(path)
        if existing_kind(self.path, "output", SinkError) == "folder":
            raise SinkError(f"output {self.path}: is a folder; give a file name such as overlay.mp4")
        make_output_folder(self.path.parent, "output", self.path)
        self.size = (int(size[0]), int(size[1]))
        self.encoded_size = (self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2)
        self.fps = float(fps) if fps and fps > 0 else DEFAULT_FPS
        self.frames_written = 0
        self._part = PartFile(self.path, "output", ".mp4")
        self._temp = self._part.name
        self._container = self._writer = None
        try:
            encoder = h264_encoder()
            if encoder is not None:
                self._open_pyav(encoder, crf, preset)
            else:
                self._open_opencv()
        except SinkError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise SinkError(f"output {self.path}: cannot start the video encoder ({exc})") from None

    def _open_pyav(self, encoder: str, crf: int, preset: str) -> None:
        import av

        self.codec = encoder
        self._container = av.open(self._temp, mode="w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream(encoder, rate=rate)
        self._stream.width, self._stream.height = self.encoded_size
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.time_base = 1 / rate
        if encoder == "libx264":
            self._stream.options = {"crf": str(crf), "preset": preset}

    def _open_opencv(self) -> None:
        self.codec = "mp4v"
        self._writer = cv2.VideoWriter(self._temp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.encoded_size)
        if not self._writer.isOpened():
            raise SinkError(f"output {self.path}: OpenCV cannot write MP4 here; install PyAV (`pip install av`)")

    def write(self, index: int, overlay: np.ndarray | None, labels: np.ndarray | None) -> None:
        width, height = self.size
        if overlay is None or overlay.ndim != 3 or overlay.shape[2] != 3:
            raise ValueError(f"VideoSink expects HxWx3 frames, got {None if overlay is None else overlay.shape}")
        if overlay.shape[:2] != (height, width):
            overlay = cv2.resize(overlay, self.size, interpolation=cv2.INTER_AREA)
        if self.encoded_size != self.size:
            overlay = cv2.copyMakeBorder(overlay, 0, self.encoded_size[1] - height, 0,
                                         self.encoded_size[0] - width, cv2.BORDER_REPLICATE)
        try:
            if self._writer is not None:
                self._writer.write(overlay)
            else:
                import av

                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(overlay), format="bgr24")
                picture.pts = self.frames_written
                self._container.mux(self._stream.encode(picture))
        except OSError as exc:
            raise write_failure("output", self.path, exc) from None
        self.frames_written += 1

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.release()
            else:
                self._container.mux(self._stream.encode(None))
                self._container.close()
            files.publish(self._temp, self.path)
        except OSError as exc:
            self.abort()
            raise write_failure("output", self.path, exc) from None
        except BaseException:
            self.abort()
            raise
        self._part.unlock()

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.release()
            elif self._container is not None:
                self._container.close()
        except Exception:  # the file is being thrown away; a failing flush does not matter
            pass
        self._part.remove()


def labels_path(folder: str | os.PathLike, index: int) -> Path:
    """Where the label map of frame `index` lives (same naming as the ground-truth folders)."""
    return Path(folder) / f"{index:06d}.png"


class LabelSink(Sink):
    """One uint8 trainId PNG per frame, `<index:06d>.png`, each written atomically.

    `abort` deletes the PNGs of this run (and the folder if this run made it).
    """

    needs_labels = True

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        kind = existing_kind(self.folder, "labels folder", SinkError)
        if kind == "file":
            raise SinkError(f"labels folder {self.folder}: is a file; give a folder path")
        self._made_folder = kind is None
        make_output_folder(self.folder, "labels folder", self.folder)
        os.unlink(temp_file_in(self.folder, "labels folder", self.folder))
        self.written: list[Path] = []

    def write(self, index: int, overlay: np.ndarray | None, labels: np.ndarray | None) -> None:
        if labels is None or labels.dtype != np.uint8 or labels.ndim != 2:
            raise ValueError("LabelSink expects a 2-D uint8 label map")
        ok, encoded = cv2.imencode(".png", labels)
        if not ok:
            raise RuntimeError(f"PNG encoding of frame {index} failed")
        target = labels_path(self.folder, index)
        try:
            files.write_bytes(target, encoded.tobytes())
        except OSError as exc:
            raise write_failure("labels folder", self.folder, exc) from None
        self.written.append(target)

    def abort(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written = []
        if self._made_folder and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
