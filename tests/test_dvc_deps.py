"""dvc.yaml declares what each stage reads, so a code change re-runs exactly what it affects."""
import ast
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from training import params
from training.engine import NOT_IDENTITY

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "runtime", "export", "bench", "tools")


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(entry: Path) -> set[Path]:
    """Every project file `entry` imports, directly or through others, at any depth (lazy imports
    inside functions included), with the __init__ of every package on the way."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                if name.split(".")[0] not in PACKAGES:
                    continue
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # the packages on the way run their __init__
                    found = module_file(".".join(parts[:i]))
                    if found is not None:
                        todo.append(found)
    return seen


def entry_file(cmd: str) -> Path:
    module = re.search(r"python -m ([\w.]+)", cmd)
    if module:
        return module_file(module.group(1) + ".__main__") or module_file(module.group(1))
    return ROOT / re.search(r"python ([\w/]+\.py)", cmd).group(1)


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", [n for n, s in stages().items() if "python" in (s.get("cmd") or "")])
def test_every_imported_module_is_a_dependency(name):
    stage = stages()[name]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    harmless = {"__init__.py"}  # package markers hold no code that changes a result
    missing = sorted(p.relative_to(ROOT).as_posix() for p in imported_files(entry_file(stage["cmd"]))
                     if not covered(p, deps) and not (p.name in harmless and not p.read_text().strip()))
    assert not missing, f"stage {name} imports {missing} but does not list them in its deps"


def leaf_keys(cls, prefix: str) -> set[str]:
    hints, keys = typing.get_type_hints(cls), set()
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys |= leaf_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.add(prefix + field.name)
    return keys


def flat(mapping: dict, prefix: str):
    for key, value in mapping.items():
        yield from flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]


def test_benchmark_rows_depend_on_every_train_key_they_inherit():
    """A train key a row reads must be a DVC param of the row, unless the benchmark overrides it,
    it names a run-independent setting, or it belongs to a method the rows do not run."""
    listed = [p for p in stages()["ssl_run"]["params"] if p.startswith("train.")]
    overridden = set(flat(params.load("ssl_benchmark").train, "train."))
    arms = set(params.load("ssl_benchmark").arms)
    for key in sorted(leaf_keys(params.TrainParams, "train.")):
        parts = key.split(".")
        if parts[1] in NOT_IDENTITY or parts[1] in ("method", "seed", "out", "iters", "checkpoint_dir"):
            continue
        method_section = len(parts) > 2 and parts[1] not in arms
        if method_section or any(key == p or key.startswith(p + ".") for p in listed):
            continue
        assert any(key == o or key.startswith(o + ".") for o in overridden), \
            f"{key} is read by the benchmark rows: list it under ssl_run's params in dvc.yaml"
