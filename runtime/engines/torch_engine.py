"""PyTorch reference backend for the traced fp32 artefact (.ts); torch is imported only here."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from runtime.contract import ModelContract
from runtime.engines import check_batch
from runtime.engines.base import Engine, EngineError

CONTRACT_FILE = "contract.json"


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        try:
            import torch
        except ImportError:
            raise EngineError(f"the torch backend needs PyTorch, which is not installed; run {path} "
                              "with the onnxruntime backend instead") from None
        self._torch = torch
        self.path = Path(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if threads is not None:
            torch.set_num_threads(int(threads))
        extra = {CONTRACT_FILE: ""}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notice
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            try:
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
            except RuntimeError as exc:
                raise EngineError(f"{self.path} is not a TorchScript artefact ({str(exc).splitlines()[0]}); "
                                  "re-export it with `python -m export.run`") from None
        if not extra[CONTRACT_FILE]:
            raise EngineError(f"{self.path} carries no model contract; re-export it with `python -m export.run`")
        self.contract = ModelContract.from_metadata(json.loads(extra[CONTRACT_FILE]), source=str(self.path))
        self.module.eval()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(self.contract, batch)
        with self._torch.inference_mode():
            output = self.module(self._torch.from_numpy(batch).to(self.device))
        return output.cpu().numpy()

    def describe(self) -> dict:
        info = {"backend": self.name, "torch": self._torch.__version__, "device": str(self.device),
                "threads": self._torch.get_num_threads(), "precision": self.contract.precision,
                "artefact": str(self.path)}
        if self.device.type == "cuda":
            info["gpu"] = self._torch.cuda.get_device_name(self.device)
        return info
