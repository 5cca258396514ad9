"""Training methods, each a plug-in over the shared parts (see base.Method), one module each."""
from __future__ import annotations

import importlib

from training.methods.base import Method, MethodContext

# train.method -> the class in training/methods/<name>.py (training.params.METHOD_NAMES lists the same names)
CLASSES = {"supervised": "Supervised", "mean_teacher": "MeanTeacher", "stpg": "STPG", "cpcl": "CPCL",
           "lpl": "LPL", "css": "CSS"}


def method_class(name: str) -> type[Method]:
    """Imported on demand, so a method's module loads only when it is used."""
    if name not in CLASSES:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(CLASSES)}")
    return getattr(importlib.import_module(f"training.methods.{name}"), CLASSES[name])


__all__ = ["CLASSES", "Method", "MethodContext", "method_class"]
