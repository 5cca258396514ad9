"""Torch datasets and the three training loaders of specs/stpg.md §2.1."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.datasets import read_image, read_label
from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, box_mask, normalize, weak_augment


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
    """Weakly augmented crops. `with_label=False` for unlabeled data; `with_mask` adds a CutMix box mask."""

    def __init__(self, pairs, crop_hw, length: int | None = None, scales=None, with_label=True,
                 with_mask=False, seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.pairs = list(pairs)
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
        image_path, label_path = self.pairs[self.order[index]]
        rng = np.random.default_rng((self.seed, epoch, index))
        label = read_label(label_path) if self.with_label else None
        image, label = weak_augment(read_image(image_path), label, self.crop_hw, rng, self.scales, self.mean, self.std)
        item = {"image": torch.from_numpy(image)}
        if label is not None:
            item["label"] = torch.from_numpy(label.astype(np.int64))
        if self.with_mask:
            item["mask"] = torch.from_numpy(box_mask(*self.crop_hw, rng))
        return item


class EvalDataset(Dataset):
    """Whole validation images, normalised, with train-id labels."""

    def __init__(self, pairs, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.pairs, self.mean, self.std = list(pairs), mean, std

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image_path, label_path = self.pairs[index]
        image = normalize(read_image(image_path), self.mean, self.std).transpose(2, 0, 1)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "label": torch.from_numpy(read_label(label_path).astype(np.int64))}


def make_train_loaders(labeled, unlabeled, crop_hw, batch_size: int, scales, workers: int, seed: int,
                       start_iteration: int = 0, need_unlabeled: bool = True, pin_memory: bool = False):
    """Endless labeled, unlabeled (with box masks) and mix-source iterators, all of length max(N_l, N_u).

    Returns (iterators, iterations per epoch).
    """
    length = max(len(labeled), len(unlabeled)) if need_unlabeled else len(labeled)
    datasets = {"labeled": TrainDataset(labeled, crop_hw, length, scales, seed=seed)}
    if need_unlabeled:
        datasets["unlabeled"] = TrainDataset(unlabeled, crop_hw, length, scales, with_label=False,
                                             with_mask=True, seed=seed + 1)
        datasets["mix"] = TrainDataset(unlabeled, crop_hw, length, scales, with_label=False, seed=seed + 2)
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
