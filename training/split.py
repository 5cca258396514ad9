"""DVC stage `split`: labeled / unlabeled list files, image-level labels and the class statistics of the split."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from runtime import files
from training import cli, params
from training.data import datasets, splits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default="data/prepared/manifest.json")
    parser.add_argument("--metrics", default="metrics/split.json")
    args = parser.parse_args(argv)
    cfg = params.load("split", args.params)
    data_cfg = params.load("data", args.params)
    manifest = datasets.read_manifest(args.manifest)
    info = datasets.dataset_info(manifest["dataset"])
    pool = [tuple(pair) for pair in manifest["train"]]

    if cfg.given_labeled:
        root = data_cfg.root or manifest["root"]
        labeled = [tuple(map(datasets.portable, p)) for p in
                   datasets.read_list_file(cfg.given_labeled, root, manifest["dataset"])]
        if cfg.given_unlabeled:
            unlabeled = [tuple(map(datasets.portable, p)) for p in
                         datasets.read_list_file(cfg.given_unlabeled, root, manifest["dataset"])]
        else:
            taken = set(labeled)
            unlabeled = [p for p in pool if p not in taken]
        index = {p: i for i, p in enumerate(pool)}
        outside = [image for image, label in labeled if (image, label) not in index]
        if outside:
            raise datasets.DatasetError(
                f"split.given_labeled: {len(outside)} images are not in the prepared train set "
                f"(first: {outside[0]}); run `prepare` on the dataset root the list was written for")
        lab_idx = np.array([index[p] for p in labeled], dtype=np.int64)
    else:
        lab_idx = None

    background = splits.BACKGROUND_CLASS.get(manifest["dataset"])
    histograms, presence = [], {}
    for image, label_path in pool:  # each mask read once, for both statistics
        label = datasets.read_label(label_path)
        histograms.append(splits.class_histogram(label, info.num_classes))
        presence[image] = splits.class_presence(label, info.num_classes, background)
    histograms = np.stack(histograms)
    if lab_idx is None:
        lab_idx, unl_idx = splits.make_split(histograms, cfg.labeled_ratio, cfg.seed, cfg.stratify)
        labeled = [pool[i] for i in lab_idx]
        unlabeled = [pool[i] for i in unl_idx]

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in (("labeled.txt", labeled), ("unlabeled.txt", unlabeled)):
        files.write_text(out / name, "".join(f"{image} {label}\n" for image, label in pairs))
    # Image-level labels of every training image, from its full mask (LPL's weak supervision).
    for image, label_path in labeled + unlabeled:
        if image not in presence:  # a given unlabeled list may name images outside the pool
            presence[image] = splits.class_presence(datasets.read_label(label_path), info.num_classes, background)
    files.write_json(out / splits.IMAGE_CLASSES_FILE,
                     splits.image_classes_payload(manifest["dataset"], info.classes, presence))

    freq_all = splits.pixel_frequency(histograms)
    freq_lab = splits.pixel_frequency(histograms[lab_idx]) if len(lab_idx) else np.zeros_like(freq_all)
    images_lab = (histograms[lab_idx] > 0).sum(axis=0) if len(lab_idx) else np.zeros(info.num_classes, int)
    files.write_json(args.metrics, {
        "dataset": manifest["dataset"],
        "labeled_ratio": cfg.labeled_ratio,
        "num_pool": len(pool),
        "num_labeled": len(labeled),
        "num_unlabeled": len(unlabeled),
        "classes_missing_from_labeled": [info.classes[c] for c in range(info.num_classes)
                                         if images_lab[c] == 0 and freq_all[c] > 0],
        "pixel_frequency": {
            name: {"labeled": round(float(freq_lab[c]), 6), "all": round(float(freq_all[c]), 6)}
            for c, name in enumerate(info.classes)},
    })
    note = "" if unlabeled else ("; no image is left unlabeled, so only train.method: supervised can use this split "
                                 "(split.labeled_ratio 2 or more leaves unlabeled images for the other methods)")
    print(f"split 1/{cfg.labeled_ratio}: {len(labeled)} labeled, {len(unlabeled)} unlabeled -> {out}{note}")


if __name__ == "__main__":
    cli.run(main)
