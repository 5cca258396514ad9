"""tools/lock.py: a result is stale when the code its stage ran on has changed (DVC's hashes)."""
import hashlib
import subprocess

import yaml

from tools import lock


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def commit(root, message="c"):
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", message)


def test_folder_hash_is_dvc_s(tmp_path):
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    entries = [("b.py", hashlib.md5(b"b").hexdigest()), ("a/c.py", hashlib.md5(b"c").hexdigest())]
    tree = Tree()
    for rel, md5 in entries:
        tree.add(tuple(rel.split("/")), Meta(), HashInfo("md5", md5))
    tree.digest()
    assert lock.folder_md5(entries) == tree.hash_info.value
    # by hand: md5 of the JSON list sorted by path, then ".dir"
    listing = ('[{"md5": "%s", "relpath": "a/c.py"}, {"md5": "%s", "relpath": "b.py"}]'
               % (entries[1][1], entries[0][1]))
    assert lock.folder_md5(entries) == hashlib.md5(listing.encode()).hexdigest() + ".dir"


def write_lock(root, deps):
    stages = {"run": {"cmd": "x", "deps": [{"path": p, "hash": "md5", "md5": m} for p, m in deps.items()]}}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def test_stale_stages_of_a_commit_ignore_the_working_tree_and_untracked_data(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/m.py").write_text("y = 2\n")
    commit(tmp_path)  # the working tree's folders are read through git's list of tracked files
    revision = lock.Revision(None, tmp_path)
    write_lock(tmp_path, {"code.py": lock.tracked_md5(revision, "code.py"),
                          "pkg": lock.tracked_md5(revision, "pkg"),
                          "data/prepared": "0" * 32 + ".dir"})  # not in git: a fresh clone has no data
    commit(tmp_path)
    head = lock.Revision("HEAD", tmp_path)
    assert lock.stale_stages(head) == {}
    (tmp_path / "pkg/m.py").write_text("y = 3\n")  # an edit not committed yet
    (tmp_path / "pkg/__pycache__").mkdir()
    assert lock.stale_stages(head) == {}
    assert lock.stale_stages(lock.Revision(None, tmp_path)) == {"run": ["pkg"]}
    commit(tmp_path)
    assert lock.stale_stages(head) == {"run": ["pkg"]}
    assert head.commit_of("pkg/m.py") == subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path,
                                                        capture_output=True, text=True).stdout.strip()


def test_every_committed_result_is_kept_by_a_failed_re_run():
    """DVC deletes a stage's outputs before running it unless they persist; the stages write them
    atomically, so with persist a failed re-run leaves the committed file as it was."""
    stages = yaml.safe_load((lock.ROOT / "dvc.yaml").read_text())["stages"]
    tracked = subprocess.run(["git", "ls-files", "metrics", "plots"], cwd=lock.ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    declared = {}
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if isinstance(out, dict):
                    (path, options), = out.items()
                    declared[path] = options
    unkept = sorted(path for path, options in declared.items()
                    if path.startswith(("metrics/", "plots/")) and not options.get("persist"))
    assert not unkept, f"{unkept}: add persist: true"
    assert all(any(t == p or t.startswith(p.split("$")[0]) for p in declared) for t in tracked if "ssl_history" not in t
               and "ssl_precision" not in t), "a committed metrics file is no stage's output"
