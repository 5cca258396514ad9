"""The training loop every method shares: three loaders, SGD + poly LR, autocast, checkpoints
with exact resume, torchrun DDP with SyncBN, tqdm progress and dvclive logging."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from training.data import datasets
from training.data.loaders import image_level_fields, make_train_loaders
from training.deployable import CHECKPOINT_FORMAT, save_atomic
from training.device import resolve_device, resolve_precision
from training.evaluate import evaluate_model
from training.methods import MethodContext, method_class
from training.models import build_model
from training.schedules import poly_lr

# Train keys that never change what is learned: a checkpoint resumes across changes of these only.
NOT_IDENTITY = ("out", "checkpoint_dir", "checkpoint_every", "eval_every", "log_every", "workers", "device")


class CheckpointError(ValueError):
    """A checkpoint that cannot resume this run; the message says why and what to do."""


def short_digest(data: bytes) -> str:
    """The first 16 hex digits of the SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()[:16]


def digest(value) -> str:
    """`short_digest` of `value`'s canonical JSON: how a run's identity names its data and splits, and
    how the benchmark names a whole identity."""
    return short_digest(json.dumps(value, sort_keys=True).encode())


def run_identity(train_cfg, model_cfg, manifest: dict, labeled, unlabeled, data: dict) -> dict:
    """Everything that defines a run, so a checkpoint is never resumed into a different one."""
    train = {k: v for k, v in dataclasses.asdict(train_cfg).items()  # other methods' sections do not count
             if k not in NOT_IDENTITY and not (isinstance(v, dict) and k != train_cfg.method)}
    return {**{f"train.{k}": v for k, v in train.items()},
            **{f"model.{k}": v for k, v in dataclasses.asdict(model_cfg).items()},
            "data": digest(data), "manifest": digest(manifest),
            "split.labeled": digest([list(p) for p in labeled]), "split.unlabeled": digest([list(p) for p in unlabeled])}


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    info = Distributed(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs one method for `train_cfg.iters` iterations, resuming from `checkpoint_dir/last.pt`.

    `mean`, `std` (data.mean / data.std) normalise every image it trains and validates on.
    """

    def __init__(self, train_cfg, model_cfg, manifest: dict, labeled, unlabeled, val_pairs=None,
                 live_dir: str | None = "dvclive/train", eval_crop=(256, 512), eval_mode: str = "sliding",
                 progress: bool = True, image_classes: dict | None = None, data_params: dict | None = None,
                 *, mean, std):
        self.cfg, self.model_cfg = train_cfg, model_cfg
        self.mean, self.std = tuple(mean), tuple(std)
        data = {**(data_params or {}), "mean": list(self.mean), "std": list(self.std)}
        self.identity = run_identity(train_cfg, model_cfg, manifest, labeled, unlabeled, data)
        self.device = resolve_device(train_cfg.device)
        self.dist = setup_distributed(self.device)
        self.autocast_dtype = resolve_precision(train_cfg.precision, self.device)
        self.info = datasets.dataset_info(manifest["dataset"])
        self.labeled, self.unlabeled, self.val_pairs = labeled, unlabeled, val_pairs or []
        self.live_dir, self.eval_crop, self.eval_mode, self.progress = live_dir, eval_crop, eval_mode, progress
        self.checkpoint_path = Path(train_cfg.checkpoint_dir) / "last.pt"
        self.start_iteration = 0
        # wall time of each step and the last logged losses, kept in the checkpoint so that a resumed
        # run still reports its whole timing and its final losses
        self.iteration_seconds: list[float] = []
        self.history: dict[str, float] = {}
        cls = method_class(train_cfg.method)
        if cls.needs_unlabeled and not unlabeled:
            raise datasets.DatasetError(f"method {train_cfg.method} needs unlabeled images but the split has none; "
                                        "raise split.labeled_ratio or use train.method: supervised")
        if cls.needs_image_classes and image_classes is None:
            raise datasets.DatasetError(f"method {train_cfg.method} needs the image-level labels of the split; "
                                        "run `dvc repro split`, which writes them")
        self.image_classes = image_classes if cls.needs_image_classes else None
        seed_everything(train_cfg.seed)
        per_rank_batch = train_cfg.batch_size
        length = max(len(labeled), len(unlabeled)) if cls.needs_unlabeled else len(labeled)
        self.iters_per_epoch = length // per_rank_batch
        if self.iters_per_epoch == 0:
            raise datasets.DatasetError(f"{length} training images cannot fill a batch of {per_rank_batch}; "
                                        "lower train.batch_size")
        context = MethodContext(self.info.num_classes, manifest["dataset"], per_rank_batch, len(labeled),
                                self.iters_per_epoch, self.mean, self.std)
        self.method = cls(train_cfg, context, self._build_network)
        if self.dist.enabled and self.device.type == "cuda":  # SyncBatchNorm exists for CUDA only;
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)  # gloo keeps per-rank BN
        self.method.to(self.device)
        if self.device.type == "cuda" or self.autocast_dtype is not None:
            self.method.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.method.param_groups(train_cfg.weight_decay), lr=train_cfg.lr,
                                         momentum=train_cfg.momentum, nesterov=cls.nesterov)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.step_module = self.method
        if self.dist.enabled:
            self.step_module = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None,
                broadcast_buffers=False, find_unused_parameters=True)

    def _build_network(self):
        return build_model(self.model_cfg.backbone, self.info.num_classes, self.model_cfg.output_stride,
                           self.model_cfg.pretrained, self.model_cfg.proj_dim)

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, iteration: int) -> None:
        if not self.dist.is_main:
            return
        save_atomic({
            "format": CHECKPOINT_FORMAT,
            "identity": self.identity,
            "iteration": iteration,
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "iteration_seconds": self.iteration_seconds,
            "history": self.history,
        }, self.checkpoint_path)

    def load_checkpoint(self) -> int:
        """The iteration to continue from: 0 without a checkpoint or with one from another run."""
        if not self.checkpoint_path.exists():
            return 0
        fix = f"delete {self.checkpoint_path.parent} to start afresh"
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file reads as many errors
            raise CheckpointError(f"{self.checkpoint_path} is damaged or unreadable ({type(exc).__name__}); {fix}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not a training checkpoint of this project; {fix}")
        theirs = state.get("identity", {})
        changed = sorted(k for k in self.identity.keys() | theirs.keys() if theirs.get(k) != self.identity.get(k))
        if changed:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} -> {self.identity.get(k)!r}" for k in changed[:3])
            print(f"{self.checkpoint_path} belongs to another run ({shown}{', ...' if len(changed) > 3 else ''}); "
                  "starting afresh (it is replaced at the first checkpoint)", file=sys.stderr)
            return 0
        self.method.load_state_dict(state["method_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.iteration_seconds = list(state.get("iteration_seconds", []))  # absent from older checkpoints
        self.history = dict(state.get("history", {}))
        return state["iteration"]

    # -- the loop -------------------------------------------------------------------------
    def _batch(self, iterators) -> dict:
        def move(tensor):
            tensor = tensor.to(self.device, non_blocking=True)
            return tensor.contiguous(memory_format=torch.channels_last) if tensor.ndim == 4 else tensor

        labeled = next(iterators["labeled"])
        batch = {"image": move(labeled["image"]), "label": move(labeled["label"])}
        if "unlabeled" in iterators:
            unlabeled, mix = next(iterators["unlabeled"]), next(iterators["mix"])
            batch.update(unlabeled=move(unlabeled["image"]), mask=move(unlabeled["mask"]), mix=move(mix["image"]))
            batch.update({key: move(value) for key, value in image_level_fields(labeled, unlabeled).items()})
        return batch

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to `cfg.iters` (or stop early after `stop_after` iterations, for tests)."""
        cfg = self.cfg
        start = self.start_iteration = self.load_checkpoint()
        # The batches depend only on (seed, iteration) (loaders.EpochSampler), so a resumed run
        # needs no loader state.
        iterators, _ = make_train_loaders(
            self.labeled, self.unlabeled, tuple(cfg.crop), cfg.batch_size, cfg.scales, cfg.workers,
            cfg.seed + 7919 * self.dist.rank, start, self.method.needs_unlabeled, self.device.type == "cuda",
            self.image_classes, mean=self.mean, std=self.std)
        live = self._live(resume=start > 0)
        end = cfg.iters if stop_after is None else min(cfg.iters, start + stop_after)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        self.method.train()
        bar = tqdm(range(start, end), initial=start, total=cfg.iters, desc=cfg.method,
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        for iteration in bar:
            tick = time.perf_counter()
            epoch = iteration // self.iters_per_epoch
            lr = poly_lr(cfg.lr, iteration, cfg.iters, cfg.poly_power, self.method.min_lr)
            for group in self.optimizer.param_groups:  # a method may scale a group or keep it at the base rate
                group["lr"] = (lr if group.get("poly", True) else cfg.lr) * group.get("lr_scale", 1.0)
            batch = self._batch(iterators)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast:
                losses = self.step_module(batch, iteration, epoch)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.update_teachers(iteration)
            self.iteration_seconds.append(time.perf_counter() - tick)  # loading included; a pause shows in one step

            done = iteration + 1
            validating = bool(self.val_pairs) and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.iters)
            if done % cfg.log_every == 0 or done == end or validating:  # the only host syncs of the loop
                self.history = {f"train/{name}": float(value.detach()) for name, value in losses.items()}
                self.history["train/lr"] = lr
                bar.set_postfix(loss=f"{self.history['train/loss']:.3f}", lr=f"{lr:.2e}")
                if validating and self.dist.is_main:
                    self.history["val/miou"] = self.validate()
                    bar.write(f"iteration {done}: val mIoU {100 * self.history['val/miou']:.2f}")
                if live is not None:  # logged under the number of iterations done
                    live.step = done
                    for name, value in self.history.items():
                        live.log_metric(name, value)
                    live.next_step()
            if done % cfg.checkpoint_every == 0 or done == end:
                self.save_checkpoint(done)
        bar.close()
        if live is not None:
            live.end()
        return self.history

    def validate(self) -> float:
        result = evaluate_model(self.method.evaluated_network(), self.val_pairs, self.info.num_classes,
                                self.eval_mode, self.eval_crop, self.device, self.autocast_dtype,
                                mean=self.mean, std=self.std)
        return result["miou"]

    def _live(self, resume: bool):
        if self.live_dir is None or not self.dist.is_main:
            return None
        from dvclive import Live

        return Live(self.live_dir, resume=resume, save_dvc_exp=False, dvcyaml=None)
