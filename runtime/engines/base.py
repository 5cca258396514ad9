"""One interface over every inference backend the runtime can drive."""
from __future__ import annotations

import abc

import numpy as np

from runtime.contract import ModelContract


class EngineError(RuntimeError):
    """The artefact cannot be run by this backend here; the message says why and what to do."""


class Engine(abc.ABC):
    """Loads one artefact, exposes its contract, runs a batch.

    `infer` takes the network input exactly as the contract's input_layout says
    (float32 NCHW normalised RGB, or uint8 NHWC RGB) and returns the contract's output
    (float32 logits / lowres logits, or uint8/int32 labels) as a host numpy array.
    """

    name: str = "engine"
    contract: ModelContract

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict:
        """Backend, device and provider details stored beside benchmark results."""
        return {"backend": self.name}

    def close(self) -> None:
        """Release device resources; engines are also context managers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
