"""`--help` is the first command a user types: every command-line entry point answers it."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "export", "runtime", "tools", "training")


def entry_points() -> list[list[str]]:
    """Every `__main__.py` and module with an `if __name__ == "__main__":` block, as the command that runs it."""
    commands = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            if path.name != "__main__.py" and not any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
                                                      for node in tree.body):
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if module.endswith(".__main__"):
                commands.append(["-m", module.removesuffix(".__main__")])
            elif module == "runtime.segment":  # the runtime's script, run by path as the README shows
                commands.append([str(path.relative_to(ROOT))])
            else:
                commands.append(["-m", module])
    return commands


def test_the_entry_points_are_found():
    found = [" ".join(c) for c in entry_points()]
    assert {"runtime/segment.py", "-m bench", "-m training.train", "-m tools.report", "-m export.run"} <= set(found)


@pytest.fixture(scope="module")
def answers():
    """Every entry point's `--help`, started together: each is a fresh interpreter that spends its
    time importing (torch for most), so they overlap well, and each test reads its own answer."""
    started = {" ".join(command): subprocess.Popen([sys.executable, *command, "--help"], cwd=ROOT, text=True,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for command in entry_points()}
    try:
        yield {key: (process, *process.communicate(timeout=300)) for key, process in started.items()}
    finally:
        for process in started.values():
            process.kill()


@pytest.mark.parametrize("command", entry_points(), ids=" ".join)
def test_help_prints_usage_and_exits_0(command, answers):
    process, stdout, stderr = answers[" ".join(command)]
    assert process.returncode == 0, stderr[-2000:]
    assert stdout.lstrip().startswith("usage:") and stderr == ""
