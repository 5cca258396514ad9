"""A camera rig: which cameras `segment.py` runs, where each one's outputs go, and feeds that
keep a camera going when its source ends.

Cameras come from `--source` given once or more (ids cam0, cam1, ...) or from a rig file:

    cameras:
      - id: front
        source: rtsp://${FRONT_USER}:${FRONT_PASSWORD}@192.168.1.20/stream1
        out: runs/front.mp4
        save_labels: runs/front_labels
        realtime: true
      - id: rear
        source: rear.mp4
        loop: true
      - id: side
        source: drive.mcap
        topic: /camera/side/image_raw

With several cameras `--out DIR` writes `DIR/<id>.mp4` and `--save-labels DIR` writes
`DIR/<id>/<frame>.png` for every camera the file gives no output of its own. Relative paths
are taken from the current folder, as on the command line. `${NAME}` in a source is environment
variable NAME (as is `--source-env NAME`), so a camera's password need not be in the file.
"""
from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from runtime.video import Source, SourceError, open_source

CAMERA_KEYS = ("id", "source", "topic", "out", "save_labels", "realtime", "loop")
CAMERA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
ENV_REFERENCE = re.compile(r"\$\{(" + ENV_NAME + r")\}")
# Reconnection waits: the first retry comes at once, then after 0.25 s, 0.5 s and every 1 s, so a
# camera that comes back is found within about a second (with a 2 s bound, a server back just
# after a failed retry was found 2.03 s later), and a dead one costs a retry a second.
BACKOFF_FIRST_S = 0.25
BACKOFF_MOST_S = 1.0


class RigError(ValueError):
    """The cameras or their outputs are given wrongly; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """One camera of the rig and where its outputs go (None: not written)."""

    id: str
    source: str
    out: Path | None = None
    save_labels: Path | None = None
    realtime: bool = False
    loop: bool = False
    topic: str | None = None  # the image topic of a recorded drive (runtime.bags)


def _check_id(camera_id, where: str) -> str:
    if not isinstance(camera_id, str) or not CAMERA_ID.fullmatch(camera_id):
        raise RigError(f"{where}: camera id {camera_id!r} must be letters, digits, '.', '_' or '-' (it names the "
                       "camera's output files); give a plain name such as front")
    return camera_id


def from_environment(text: str, where: str) -> str:
    """`text` with every ${NAME} replaced by environment variable NAME (unset or empty is an
    error naming the variable, never a value)."""
    def value(match: re.Match) -> str:
        found = os.environ.get(match.group(1))
        if not found:
            raise RigError(f"{where}: environment variable {match.group(1)} is not set or empty; export it with the "
                           "camera's source (e.g. its rtsp:// URL)")
        return found
    return ENV_REFERENCE.sub(value, text)


def load_rig_file(path: Path) -> list[CameraSpec]:
    """The cameras a rig file (YAML) names, checked."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RigError(f"rig file {path}: no such file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RigError(f"rig file {path}: cannot be read ({exc}); check the path") from None
    import yaml  # only rigs need it (pip install '.[runtime]' brings it)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RigError(f"rig file {path}: not valid YAML ({' '.join(str(exc).split())}); "
                       "see the rig.yaml example in README.md") from None
    cameras = data.get("cameras") if isinstance(data, dict) else None
    if not isinstance(cameras, list) or not cameras:
        raise RigError(f"rig file {path}: needs a non-empty list `cameras:` of entries with id and source; "
                       "see the rig.yaml example in README.md")
    specs = []
    for number, entry in enumerate(cameras, 1):
        where = f"rig file {path}, camera {number}"
        if not isinstance(entry, dict):
            raise RigError(f"{where}: is not a mapping; give `id:` and `source:` (see README.md)")
        unknown = sorted(set(entry) - set(CAMERA_KEYS))
        if unknown:
            raise RigError(f"{where}: unknown key {unknown[0]!r}; use {', '.join(CAMERA_KEYS)}")
        for key in ("id", "source"):
            if entry.get(key) in (None, ""):
                raise RigError(f"{where}: missing `{key}:`; every camera needs an id and a source")
        for key in ("realtime", "loop"):
            if not isinstance(entry.get(key, False), bool):
                raise RigError(f"{where}: `{key}:` must be true or false, got {entry[key]!r}")
        specs.append(CameraSpec(
            id=_check_id(entry["id"], where), source=from_environment(str(entry["source"]), where),
            out=Path(entry["out"]) if entry.get("out") else None,
            save_labels=Path(entry["save_labels"]) if entry.get("save_labels") else None,
            realtime=entry.get("realtime", False), loop=entry.get("loop", False),
            topic=str(entry["topic"]) if entry.get("topic") else None))
    return specs


def camera_specs(args) -> list[CameraSpec]:
    """The cameras of a segment.py command line: its --source(s) (each with each --topic: one camera
    per topic of a drive) or its --rig file, with the shared --out / --save-labels / --realtime /
    --loop applied."""
    for name in args.source_env:
        if not re.fullmatch(ENV_NAME, name):
            raise RigError(f"--source-env {name!r}: not an environment variable name; give one such as CAM_FRONT")
    sources = [*args.source, *(from_environment(f"${{{name}}}", f"--source-env {name}") for name in args.source_env)]
    if args.rig is not None and args.topic:
        raise RigError("--topic names the cameras of --source drives; in a rig file give each camera its `topic:`")
    if args.out_bag is not None and args.loop:
        raise RigError("--out-bag writes each input message once; drop --loop")
    feeds = [(source, topic) for source in sources for topic in (args.topic or [None])]
    if args.rig is None and len(feeds) == 1:  # the single stream: outputs named as given
        return [CameraSpec("cam0", sources[0], args.out, args.save_labels, args.realtime, args.loop, feeds[0][1])]
    specs = load_rig_file(args.rig) if args.rig is not None else [
        CameraSpec(f"cam{number}", source, topic=topic) for number, (source, topic) in enumerate(feeds)]
    if args.out is not None and args.out.suffix.lower() in (".mp4", ".mov", ".mkv", ".avi"):
        raise RigError(f"--out {args.out}: with several cameras --out names a folder (one <camera id>.mp4 each); "
                       "give a folder such as runs/")
    ids = [spec.id for spec in specs]
    duplicate = next((camera_id for camera_id in ids if ids.count(camera_id) > 1), None)
    if duplicate is not None:
        raise RigError(f"camera id {duplicate!r} is given twice; give every camera its own id")
    specs = [dataclasses.replace(
        spec, out=spec.out or (args.out / f"{spec.id}.mp4" if args.out is not None else None),
        save_labels=spec.save_labels or (args.save_labels / spec.id if args.save_labels is not None else None),
        realtime=spec.realtime or args.realtime, loop=spec.loop or args.loop) for spec in specs]
    for kind in ("out", "save_labels"):
        paths = [getattr(spec, kind).resolve() for spec in specs if getattr(spec, kind) is not None]
        shared = next((path for path in paths if paths.count(path) > 1), None)
        if shared is not None:
            raise RigError(f"{shared} is the {kind.replace('_', '-')} of two cameras; give each camera its own")
    return specs


def backoff_delays(first: float = BACKOFF_FIRST_S, most: float = BACKOFF_MOST_S) -> Iterator[float]:
    """first, 2 first, 4 first, ... never more than `most`."""
    delay = first
    while True:
        yield min(delay, most)
        delay = min(delay * 2, most)


class Feed:
    """The frames of one camera across re-openings of its source.

    A live source (camera index, stream URL) that stops delivering is opened again, at once and
    then after bounded exponential back-off (backoff_delays), and each outage is recorded as
    {start_s: since the feed began, length_s, frames_lost: the length at the source's frame
    rate}; indices go on across it, leaving the lost frames as a gap. A file with `loop` starts
    again from its first frame, its indices going on; other files simply end. `cancel()` (the
    rig stopping) ends a wait for a camera that does not come back.
    """

    def __init__(self, source: Source, *, loop: bool = False,
                 opener: Callable[[str], Source] = open_source, clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.spec, self.fps, self.size, self.is_live = source.spec, source.fps, source.size, source.is_live
        self.loop = loop and not source.is_live
        self.frame_count = None if self.loop else source.frame_count
        self.corrupt_files = source.corrupt_files  # a looped folder's damaged files, named once
        self.outages: list[dict] = []
        self._corrupt_before = 0  # corrupt frames of the sources already closed
        self._opener, self._clock = opener, clock
        self._cancelled = threading.Event()

    @property
    def corrupt_frames(self) -> int:
        return self._corrupt_before + self.source.corrupt_frames

    def __iter__(self) -> Iterator[tuple[int, object]]:
        began = self._clock()
        offset = 0
        while True:
            last = -1
            for index, frame in self.source:
                last = index
                yield offset + index, frame
            offset += last + 1
            if not (self.is_live or self.loop) or self._cancelled.is_set():
                return
            lost_at = self._clock()
            if not self._reopen():
                return
            if self.is_live:
                length = self._clock() - lost_at
                lost = round(length * self.fps)
                self.outages.append({"start_s": lost_at - began, "length_s": length, "frames_lost": lost})
                offset += lost

    def _reopen(self) -> bool:
        """Open the source again (retrying a live one with back-off); False once cancelled."""
        self._corrupt_before += self.source.corrupt_frames
        self.source.close()
        delays = backoff_delays()
        while not self._cancelled.is_set():
            try:
                self.source = self._opener(self.spec)
                return True
            except SourceError:
                if not self.is_live:
                    raise
                self._cancelled.wait(next(delays))
        return False

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
