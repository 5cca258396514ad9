import contextlib
import os
import shutil
import subprocess

import pytest


@pytest.fixture
def small_file_system(tmp_path):
    """`mount(name, size_bytes, read_only=False)`: a tmpfs of its own under tmp_path, to fill up or
    to find read-only; unmounted afterwards. Needs root and a kernel that lets us mount."""
    with contextlib.ExitStack() as mounted:
        def mount(name: str, size_bytes: int, read_only: bool = False):
            if os.geteuid() != 0 or shutil.which("mount") is None:
                pytest.skip("a small file system needs root to mount a tmpfs")
            folder = tmp_path / name
            folder.mkdir()
            options = f"size={size_bytes}" + (",ro" if read_only else "")
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
            mounted.callback(subprocess.run, ["umount", str(folder)], check=True)
            return folder

        yield mount
