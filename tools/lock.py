"""Which committed results were produced by code that has changed since: each stage's recorded
dependency hashes in `dvc.lock` against the files as committed.

`dvc status` answers a wider question on a working copy (it also checks data and models, which
a fresh clone does not have); this answers the narrow one that decides whether a published
number still belongs to the code beside it, and it answers it for a commit, so a user's local
runs never change it. Hashes are DVC's: md5 of a file's bytes, and for a folder the md5 of the
sorted JSON list of its files' {md5, relpath}, suffixed `.dir`.

    python -m tools.lock            # the stale stages at HEAD, one line each, with the changed paths
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


class Revision:
    """Files as committed at `rev` (git's object store), or the working tree when `rev` is None."""

    def __init__(self, rev: str | None = "HEAD", root: Path = ROOT):
        self.rev, self.root = rev, root

    def _git(self, *args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=self.root, capture_output=True, check=True).stdout

    def read(self, rel: str) -> bytes | None:
        if self.rev is None:
            path = self.root / rel
            return path.read_bytes() if path.is_file() else None
        try:
            if self._git("cat-file", "-t", f"{self.rev}:{rel}").strip() != b"blob":
                return None  # a folder
            return self._git("cat-file", "blob", f"{self.rev}:{rel}")
        except subprocess.CalledProcessError:
            return None

    def files_under(self, rel: str) -> list[str] | None:
        """Tracked files under folder `rel` (paths relative to it), or None if it is no tracked folder."""
        if self.rev is None:
            listed = self._git("ls-files", "-z", "--", rel).decode().split("\0")
        else:
            listed = self._git("ls-tree", "-r", "-z", "--name-only", self.rev, "--", rel).decode().split("\0")
        prefix = rel.rstrip("/") + "/"
        inside = [name[len(prefix):] for name in listed if name.startswith(prefix)]
        return sorted(inside) or None

    def commit_of(self, rel: str) -> str | None:
        """The short hash of the last commit (up to `rev`) that changed `rel`."""
        out = self._git("log", "-1", "--format=%h", self.rev or "HEAD", "--", rel).decode().strip()
        return out or None


def file_md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def folder_md5(entries: list[tuple[str, str]]) -> str:
    """DVC's folder hash from (relpath, md5) pairs."""
    listing = sorted(({"md5": md5, "relpath": rel} for rel, md5 in entries), key=lambda e: e["relpath"])
    return file_md5(json.dumps(listing, sort_keys=True).encode("utf-8")) + ".dir"


def tracked_md5(revision: Revision, rel: str) -> str | None:
    """DVC's hash of `rel` as committed, or None if git does not track it (data, models)."""
    data = revision.read(rel)
    if data is not None:
        return file_md5(data)
    names = revision.files_under(rel)
    if names is None:
        return None
    return folder_md5([(name, file_md5(revision.read(f"{rel}/{name}"))) for name in names])


def stale_stages(revision: Revision | None = None) -> dict[str, list[str]]:
    """Stage name -> the tracked dependencies whose hash differs from the one `dvc.lock` recorded."""
    revision = revision or Revision()
    lock = yaml.safe_load(revision.read("dvc.lock") or b"{}") or {}
    hashes: dict[str, str | None] = {}
    stale = {}
    for stage, entry in (lock.get("stages") or {}).items():
        changed = []
        for dep in entry.get("deps", []):
            path = dep["path"]
            if path not in hashes:
                hashes[path] = tracked_md5(revision, path)
            if hashes[path] is not None and hashes[path] != dep.get("md5"):
                changed.append(path)
        if changed:
            stale[stage] = changed
    return stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to check (default HEAD); 'worktree' for the files as they are")
    args = parser.parse_args(argv)
    stale = stale_stages(Revision(None if args.rev == "worktree" else args.rev))
    for stage, paths in stale.items():
        print(f"{stage}: {', '.join(paths)}")
    print(f"{len(stale)} stage(s) with changed code since they ran", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
