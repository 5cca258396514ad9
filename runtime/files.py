"""Atomic, durable file writes: write to a temporary name in the target's folder, then rename.

Readers (DVC, a resumed stage, a deployed runtime) never see a half-written file, and an
interrupted write leaves the previous file, if any, in place. Every rename goes through
`publish`, which syncs the data before the rename and the folder after it: without both, ext4
and most flash file systems can leave a zero-length file under the final name after a power
cut, which a vehicle gets without warning. The temporary name is short
(`.<8 hex>.tmp`) so that a final name at the file-system limit still works, and the file is
created with the umask's permissions (unlike mkstemp's 0600) because it becomes the output.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sync(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under `folder`, deepest first, `folder` itself last."""
    for root, _, names in os.walk(folder, topdown=False):
        for name in names:
            sync(os.path.join(root, name))
        sync(root)


def publish(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished `temp` (a file or a folder) to `path`, durably: its data reaches the
    disk before the name does, and the folder's new entry after."""
    if os.path.isdir(temp):
        sync_tree(temp)
    else:
        sync(temp)
    os.replace(temp, path)
    sync(Path(path).parent)


def create_temp(folder: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """A new empty hidden file in `folder`; creating it also proves the folder is writable.

    `suffix` is for writers that pick the format from the extension (a video container).
    """
    while True:
        temp = Path(folder) / f".{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    A write fault inside the block that names no file, or names the temporary one, is raised
    again naming `path`, so the one-line error says which output could not be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = create_temp(path.parent)
    try:
        yield temp
        publish(temp, path)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, str(temp)):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # OSError(errno) picks the subclass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as temp:
        temp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload, *, sort_keys: bool = False) -> None:
    """Indented JSON with a final newline, the form every metrics and sidecar file uses."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")


def replace_dir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder `source` into place as `target`; an old `target` is removed only
    once the new one is there, so a reader finds the old folder or the new one, never a mix."""
    source, target = Path(source), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=target.name + ".old-", dir=target.parent))
        os.replace(target, old / target.name)
    publish(source, target)
    if old is not None:
        shutil.rmtree(old)
