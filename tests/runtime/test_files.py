"""Atomic writes: the final mode follows the umask, a failed write leaves the old file alone."""
import contextlib
import json
import os

import pytest

from runtime import files


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_written_file_takes_its_mode_from_the_umask(tmp_path, mask, mode):
    target = tmp_path / "out.json"
    with umask(mask):
        files.write_json(target, {"a": 1})
    assert target.stat().st_mode & 0o777 == mode


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "artefact.onnx"
    with pytest.raises(RuntimeError):
        with files.atomic_output(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    files.write_bytes(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_output(target) as temp:
            temp.write_bytes(b"new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_a_write_fault_names_the_output_not_the_temp(tmp_path):
    """A full disk reported by a file object (no name) or by a writer that opened the temp by name
    is raised again naming the output; a fault naming another file is left alone."""
    import errno
    target = tmp_path / "model.ts"
    for filename in (None, "TEMP"):
        with pytest.raises(OSError) as raised:
            with files.atomic_output(target) as temp:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(temp)] if filename else []))
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    with pytest.raises(FileNotFoundError) as raised:  # the subclass survives the renaming
        with files.atomic_output(target):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    assert raised.value.filename == str(target)
    with pytest.raises(OSError) as raised:
        with files.atomic_output(target):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "input.png"))
    assert raised.value.filename == str(tmp_path / "input.png")
    assert list(tmp_path.iterdir()) == []


def test_a_final_name_at_the_file_system_limit_still_works(tmp_path):
    target = tmp_path / ("n" * 250)
    with files.atomic_output(target) as temp:
        assert temp.parent == tmp_path and len(temp.name) == len(".01234567.tmp")
        temp.write_text("x")
    assert target.read_text() == "x" and list(tmp_path.iterdir()) == [target]


def test_missing_folders_are_made_and_json_is_indented_with_a_final_newline(tmp_path):
    target = tmp_path / "a" / "b" / "metrics.json"
    files.write_json(target, {"b": 2, "a": [1]}, sort_keys=True)
    assert target.read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 2\n}\n'
    assert json.loads(target.read_text()) == {"a": [1], "b": 2}


def test_a_temp_keeps_the_suffix_a_video_writer_needs(tmp_path):
    temp = files.create_temp(tmp_path, ".part.mp4")
    assert temp.name.startswith(".") and temp.name.endswith(".part.mp4") and temp.stat().st_size == 0


def test_each_write_syncs_its_data_before_the_rename_and_the_folder_after(tmp_path, disk_log):
    files.write_json(tmp_path / "a" / "metrics.json", {"miou": 0.5})
    assert disk_log.durable(tmp_path / "a" / "metrics.json")
    renames = [event for event in disk_log.events if event[0] == "rename"]
    assert len(renames) == 1


def test_a_replaced_folder_syncs_every_file_in_it_before_it_takes_the_name(tmp_path, disk_log):
    source = tmp_path / "staging"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "000000.png").write_bytes(b"png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "old.png").write_bytes(b"old")
    files.replace_dir(source, tmp_path / "labels")
    rename = disk_log.events.index(("rename", str(source), str(tmp_path / "labels")))
    before = disk_log.events[:rename]
    assert ("fsync", str(source / "sub" / "000000.png")) in before and ("fsync", str(source / "sub")) in before
    assert disk_log.durable(tmp_path / "labels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_the_spy_catches_a_rename_without_a_sync(tmp_path, disk_log):
    temp = tmp_path / "t"
    temp.write_bytes(b"x")
    os.replace(temp, tmp_path / "final")
    assert not disk_log.durable(tmp_path / "final")
