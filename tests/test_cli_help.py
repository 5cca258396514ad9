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


@pytest.mark.parametrize("command", entry_points(), ids=" ".join)
def test_help_prints_usage_and_exits_0(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.lstrip().startswith("usage:") and result.stderr == ""
