"""Running the real command lines as a user would, and the checks every bad-input case shares:
exit code 2, one line on stderr naming the problem, nothing left under a final name, nothing lost."""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def command(target: str, *args) -> list[str]:
    """`python -m package.module ...`, or `python path/to/script.py ...` for a .py target."""
    head = [str(REPO / target)] if target.endswith(".py") else ["-m", target]
    return [sys.executable, *head, *map(str, args)]


def run(target: str, *args, cwd: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(command(target, *args), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **popen)


def files_in(folder: Path) -> dict[str, str]:
    """Every file under `folder`, hidden ones included, with a digest of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_refused(returncode: int, stderr: str, *words: str) -> str:
    """Exit code 2 and exactly one line on stderr holding every one of `words`; the line."""
    lines = stderr.strip().splitlines()
    assert returncode == 2 and len(lines) == 1, f"exit {returncode}, stderr:\n{stderr}"
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingFile:
    """A file object on a disk that fills up after `room` bytes: the write that does not fit
    fails with ENOSPC, as the operating system reports it."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise disk_full()
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()
