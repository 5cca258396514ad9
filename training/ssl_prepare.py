"""DVC stage `ssl_prepare`: the semi-supervised benchmark's own data and split (docs/ssl_benchmark.md),
made by the `prepare` and `split` stages' code under ssl_benchmark.out_dir."""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import yaml

from training import cli, params
from training import prepare as prepare_stage
from training import split as split_stage


def prepare(params_path: str) -> None:
    ssl = params.load("ssl_benchmark", params_path)
    prepared, splits_dir = ssl.data_dirs
    data_cfg = dataclasses.replace(params.load("data", params_path), dataset="synthetic", root=None, synthetic=ssl.data)
    num_train, num_val, _ = prepare_stage.prepare(data_cfg, prepared, demo=False)  # the rows need no clip
    with tempfile.TemporaryDirectory() as tmp:  # the split stage's own code, on the benchmark's split params
        split_params = Path(tmp) / "params.yaml"
        split_params.write_text(yaml.safe_dump(params.merged(params.load_raw(params_path), {"split": {
            "labeled_ratio": ssl.labeled_ratio, "seed": ssl.split_seed, "out_dir": str(splits_dir),
            "given_labeled": None, "given_unlabeled": None}})))
        split_stage.main(["--params", str(split_params), "--manifest", str(prepared / "manifest.json"),
                          "--metrics", str(splits_dir / "split.json")])
    print(f"ssl benchmark data: {num_train} train, {num_val} val images at "
          f"{ssl.data.height}x{ssl.data.width} -> {prepared}, {splits_dir}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    prepare(parser.parse_args(argv).params)


if __name__ == "__main__":
    cli.run(main)
