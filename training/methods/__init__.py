"""Training methods, each a plug-in over the shared parts (see base.Method)."""
from __future__ import annotations

from training.methods.base import Method, MethodContext


def method_class(name: str) -> type[Method]:
    # Imported on demand so a method's optional dependencies load only when it is used.
    if name == "supervised":
        from training.methods.supervised import Supervised
        return Supervised
    if name == "mean_teacher":
        from training.methods.mean_teacher import MeanTeacher
        return MeanTeacher
    if name == "stpg":
        from training.methods.stpg import STPG
        return STPG
    if name == "cpcl":
        from training.methods.cpcl import CPCL
        return CPCL
    if name == "lpl":
        from training.methods.lpl import LPL
        return LPL
    if name == "css":
        from training.methods.css import CSS
        return CSS
    raise ValueError(f"unknown method {name!r}; use supervised, mean_teacher, stpg, cpcl, lpl or css")


__all__ = ["Method", "MethodContext", "method_class"]
