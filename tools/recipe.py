"""A published training recipe as one command: recipes/<method>_<dataset>_<split>.yaml is a params
overlay (the official config's values; the method page lists each with the line it comes from).

    python -m tools.recipe recipes/cpcl_cityscapes_1-8.yaml --root /datasets/cityscapes

checks the overlay against the params schema (laid over params.yaml) and prints the
`dvc exp run -S key=value ... evaluate` command that trains and evaluates it, one -S per value of
the recipe plus data.root; run that line on the GPU machine. Nothing is changed here.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import yaml

from training import cli, params

TARGET = "evaluate"  # trains (train), then evaluates the evaluated network


def load(path: str | Path) -> dict:
    """The overlay of the recipe file `path`, refused unless it is a mapping of params sections."""
    path = Path(path)
    if not path.exists():
        raise params.ParamsError(f"recipe {path} not found; the recipes are recipes/*.yaml")
    overlay = yaml.safe_load(path.read_text())
    if not isinstance(overlay, dict):
        raise params.ParamsError(f"recipe {path} must be a mapping of params sections, like params.yaml")
    return overlay


def settings(overlay: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Every leaf of the overlay as (dotted key, value), in file order: one `dvc exp run -S` each."""
    out = []
    for key, value in overlay.items():
        if isinstance(value, dict):
            out += settings(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def command(overlay: dict, root: str, base: str | Path = params.PROJECT_PARAMS) -> str:
    """The `dvc exp run` line of the overlay with `data.root` = `root`, after checking the overlay
    laid over `base` through the params schema (an unknown key or wrong type fails, naming it)."""
    overlay = params.merged(overlay, {"data": {"root": root}})
    params.checked(params.merged(yaml.safe_load(Path(base).read_text()), overlay))
    # DVC reads each value as YAML; JSON is YAML, so lists, numbers, null and strings read back unchanged
    flags = " ".join(f"-S {shlex.quote(f'{key}={json.dumps(value)}')}" for key, value in settings(overlay))
    return f"dvc exp run {flags} {TARGET}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipes/<method>_<dataset>_<split>.yaml")
    parser.add_argument("--root", required=True, help="the dataset's root on the machine that runs it (data.root)")
    args = parser.parse_args(argv)
    print(command(load(args.recipe), args.root))


if __name__ == "__main__":
    cli.run(main)
