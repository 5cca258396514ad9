"""Torch datasets and the three training loaders (docs/methods/stpg.md §2)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.cityscapes import IGNORE
from training.data.datasets import DatasetError, read_image, read_label
from training.data.transforms import box_mask, normalize, weak_augment


def tiled_indices(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Indices 0..n-1 tiled to `length`, topped up with a random subset (labeled images repeat)."""
    if length <= n:
        return np.arange(n)
    tiles = np.tile(np.arange(n), length // n)
    return np.concatenate([tiles, rng.permutation(n)[: length - len(tiles)]])


class EpochSampler(Sampler):
    """Endless (epoch, index) keys: a fresh permutation per epoch, drop_last per epoch.

    Every key fixes the item's augmentation, so the stream depends only on (seed, iteration):
    resuming at iteration t gives exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, length: int, batch_size: int, seed: int, start_iteration: int = 0):
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.iters_per_epoch = length // batch_size
        if self.iters_per_epoch == 0:
            raise ValueError(f"a loader of {length} images cannot fill a batch of {batch_size}; lower train.batch_size")
        self.start_iteration = start_iteration

    def __iter__(self):
        epoch, skip = divmod(self.start_iteration, self.iters_per_epoch)
        while True:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.length)
            for index in order[skip * self.batch_size: self.iters_per_epoch * self.batch_size]:
                yield epoch, int(index)
            epoch, skip = epoch + 1, 0


class TrainDataset(Dataset):
    """Weakly augmented crops, normalised with `mean`, `std` (data.mean / data.std). `with_label=False`
    for unlabeled data; `with_mask` adds a CutMix box mask.

    For image-level supervision (LPL): `classes` (N,K) adds each image's class-presence vector, and
    `has_label` (N,) reads masks only where true, giving the other images an all-ignore label and
    every item its flag.
    """

    def __init__(self, pairs, crop_hw, length: int | None = None, scales=None, with_label=True,
                 with_mask=False, seed: int = 0, *, mean, std,
                 classes: np.ndarray | None = None, has_label: np.ndarray | None = None):
        self.pairs = list(pairs)
        self.classes, self.has_label = classes, has_label
        self.crop_hw = tuple(crop_hw)
        self.scales = tuple(scales) if scales else (1.0,)
        self.with_label, self.with_mask = with_label, with_mask
        self.mean, self.std = mean, std
        self.order = tiled_indices(len(self.pairs), length or len(self.pairs), np.random.default_rng(seed))
        self.seed = seed

    def __len__(self):
        return len(self.order)

    def __getitem__(self, key):
        epoch, index = key
        pair = self.order[index]
        image_path, label_path = self.pairs[pair]
        rng = np.random.default_rng((self.seed, epoch, index))
        with_label = self.with_label if self.has_label is None else bool(self.has_label[pair])
        label = read_label(label_path) if with_label else None
        image, label = weak_augment(read_image(image_path), label, self.crop_hw, rng, self.scales, self.mean, self.std)
        item = {"image": torch.from_numpy(image)}
        if self.has_label is not None:
            item["has_label"] = torch.tensor(with_label)
            label = label if with_label else np.full(self.crop_hw, IGNORE, dtype=np.uint8)
        if self.classes is not None:
            item["classes"] = torch.from_numpy(self.classes[pair])
        if label is not None:
            item["label"] = torch.from_numpy(label.astype(np.int64))
        if self.with_mask:
            item["mask"] = torch.from_numpy(box_mask(*self.crop_hw, rng))
        return item


class EvalDataset(Dataset):
    """Whole validation images, normalised with the `mean`, `std` the evaluated model records,
    with train-id labels."""

    def __init__(self, pairs, mean, std):
        self.pairs, self.mean, self.std = list(pairs), mean, std

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image_path, label_path = self.pairs[index]
        return {"image": image_tensor(image_path, self.mean, self.std),
                "label": torch.from_numpy(read_label(label_path).astype(np.int64))}


def image_tensor(path, mean, std) -> torch.Tensor:
    """One whole image as the network takes it: normalised, channels first, (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(normalize(read_image(path), mean, std).transpose(2, 0, 1)))


def make_train_loaders(labeled, unlabeled, crop_hw, batch_size: int, scales, workers: int, seed: int,
                       start_iteration: int = 0, need_unlabeled: bool = True, pin_memory: bool = False,
                       image_classes: dict[str, np.ndarray] | None = None, *, mean, std):
    """Endless labeled, unlabeled (with box masks) and mix-source iterators, all of length max(N_l, N_u),
    their images normalised with `mean`, `std`.

    With `image_classes` (image-level labels by image path, LPL's semi-and-weakly supervised
    setting) every labeled and unlabeled item carries its class-presence vector, and the unlabeled
    loader draws from all training images, the labeled ones flagged and with their masks, so
    that its length is N_l + N_u (docs/methods/lpl.md). Returns (iterators, iterations per epoch).
    """
    weak, extra_labeled, extra_weak = unlabeled, {}, {}
    if image_classes is not None:
        weak = list(labeled) + list(unlabeled)
        extra_labeled = {"classes": presence_table(labeled, image_classes)}
        extra_weak = {"classes": presence_table(weak, image_classes),
                      "has_label": np.arange(len(weak)) < len(labeled)}
    length = max(len(labeled), len(weak)) if need_unlabeled else len(labeled)
    norm = {"mean": mean, "std": std}
    datasets = {"labeled": TrainDataset(labeled, crop_hw, length, scales, seed=seed, **norm, **extra_labeled)}
    if need_unlabeled:
        datasets["unlabeled"] = TrainDataset(weak, crop_hw, length, scales, with_label=False,
                                             with_mask=True, seed=seed + 1, **norm, **extra_weak)
        datasets["mix"] = TrainDataset(unlabeled, crop_hw, length, scales, with_label=False, seed=seed + 2, **norm)
    iterators = {}
    for offset, (name, dataset) in enumerate(datasets.items()):
        sampler = EpochSampler(length, batch_size, seed + 1000 * offset, start_iteration)
        # An own generator: creating the iterator must not draw from the global torch RNG,
        # whose restored state a resumed run relies on.
        generator = torch.Generator().manual_seed(seed + offset)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, generator=generator,
                            persistent_workers=workers > 0, pin_memory=pin_memory,
                            prefetch_factor=4 if workers > 0 else None)
        iterators[name] = iter(loader)
    return iterators, length // batch_size


def presence_table(pairs, image_classes: dict[str, np.ndarray]) -> np.ndarray:
    """(N,K) class-presence rows of `pairs`, refusing images the split stage did not label."""
    missing = [image for image, _ in pairs if str(image) not in image_classes]
    if missing:
        raise DatasetError(f"{len(missing)} training images have no image-level labels (first: {missing[0]}); "
                           "re-run `dvc repro split`, which writes them for the current split")
    return np.stack([image_classes[str(image)] for image, _ in pairs])


def image_level_fields(labeled: dict, unlabeled: dict) -> dict:
    """The batch keys of image-level supervision, from one labeled and one unlabeled loader batch.

    Empty unless the loaders were given image classes, so other methods' batches are unchanged.
    """
    if "classes" not in labeled:
        return {}
    return {"image_classes": labeled["classes"], "unlabeled_classes": unlabeled["classes"],
            "unlabeled_label": unlabeled["label"], "unlabeled_has_label": unlabeled["has_label"]}
