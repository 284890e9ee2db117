"""momos: Mosaic-of-Motifs training, measured with kcomplexity.

The torch-based parts load on first use, so reading finished runs
(``momos.compare``, ``momos.rundir``) works without importing torch.
"""
from __future__ import annotations

from typing import Any

from .errors import MoMosError

_LAZY = {"project": "projection", "MoMos": "projection", "Projection": "projection", "Mosaic": "mosaic",
         "train": "trainer", "TrainConfig": "config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'momos' has no attribute {name!r}")


__all__ = ["project", "MoMos", "Projection", "Mosaic", "MoMosError", "train", "TrainConfig"]
