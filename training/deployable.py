"""The trained network handed to export: weights plus what a deployment needs to know.

Kept apart from the training checkpoints (which hold optimisers, teachers, memory bank...)
so export depends on one small, versioned format.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch

from runtime.files import atomic_output
from training.models import build_model

FORMAT = "stpg-drive/deployable/1"
CHECKPOINT_FORMAT = "stpg-drive/train-checkpoint/1"  # the training checkpoints (training/engine.py)


class DeployableError(ValueError):
    """The file is not a deployable model of this project version."""


def save_atomic(payload, path: str | Path) -> None:
    """torch.save to a temp name, then rename: an interrupted save never leaves a valid-looking file.

    A failed write (disk full, read-only) is an OSError naming `path`: torch reports it as a bare
    RuntimeError of its zip writer, with the file object's OSError only as the context, so that
    OSError is raised for atomic_output to name the path.
    """
    with atomic_output(path) as temp, open(temp, "wb") as fh:
        try:
            torch.save(payload, fh)
        except RuntimeError as exc:
            if not isinstance(exc.__context__, OSError):
                raise
            raise exc.__context__ from None


def save_deployable(path: str | Path, model: torch.nn.Module, *, classes, palette, mean, std,
                    dataset: str, method: str, iteration: int) -> None:
    payload = {
        "format": FORMAT,
        "model_config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "palette": [list(map(int, c)) for c in palette],
        "mean": list(map(float, mean)),
        "std": list(map(float, std)),
        "dataset": dataset,
        "method": method,
        "iteration": int(iteration),
    }
    save_atomic(payload, path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_training_checkpoint(path: Path) -> bool:
    """Whether `path` is one of the trainer's checkpoints, told from the bytes of its pickle: it
    holds objects (random states) that a weights-only load refuses to unpickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(CHECKPOINT_FORMAT.encode() in archive.read(name)
                       for name in archive.namelist() if name.endswith("/data.pkl"))
    except (zipfile.BadZipFile, OSError):
        return False


def load_deployable(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """The network in eval mode and the metadata dict (with `sha256` of the file added)."""
    path = Path(path)
    if not path.exists():
        raise DeployableError(f"model checkpoint not found: {path}; run `dvc repro train` first or set export.checkpoint")
    if is_training_checkpoint(path):
        raise DeployableError(
            f"{path} is a training checkpoint (it resumes training); use models/gen_student.pt (train.out), the "
            "deployable model that `python -m training.train` writes when training ends, which also finishes an "
            "interrupted run from this checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise DeployableError(f"{path} is not a readable torch checkpoint ({exc.__class__.__name__}); re-run training") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DeployableError(f"{path} is not a deployable model ({FORMAT}); export takes models/gen_student.pt from `dvc repro train`")
    model = build_model(**payload["model_config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["sha256"] = file_sha256(path)
    return model, info
