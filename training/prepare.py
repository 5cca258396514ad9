"""DVC stage `prepare`: make (synthetic) or check (Cityscapes / VOC) the dataset, write its manifest.

The manifest lists the train and val (image, label) pairs, so every later stage reads one file
whatever the dataset.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from training import cli, params
from training.data import datasets

OUT_DIR = Path("data/prepared")


def prepare(cfg: params.DataParams, out_dir: Path = OUT_DIR) -> tuple[int, int, Path]:
    """Make or check the dataset of `cfg` and write `out_dir`/manifest.json; (train, val) counts and root."""
    if cfg.dataset == "synthetic":
        from training.data import synthetic

        root = out_dir / "synthetic"
        synthetic.write_dataset(root, cfg.synthetic)
    else:
        if not cfg.root:
            raise params.ParamsError(f"params: data.root must point at the {cfg.dataset} dataset")
        root = Path(cfg.root)
    train = datasets.list_pairs(root, "train", cfg.dataset)
    val = datasets.list_pairs(root, "val", cfg.dataset)
    datasets.write_manifest(out_dir / "manifest.json", cfg.dataset, root, train, val)
    return len(train), len(val), root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = params.load("data", args.params)
    num_train, num_val, root = prepare(cfg)
    print(f"prepared {cfg.dataset}: {num_train} train, {num_val} val images under {root}")

if __name__ == "__main__":
    cli.run(main)
