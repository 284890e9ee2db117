"""Named prequential configurations: models, chunk boundaries and fitting options chosen once, by name.

A preset was picked among the configurations tried on MNIST; that choice is
information too, and :attr:`Preset.tried` says how many there were, so a
reader can charge ``log2(tried)`` bits for it (the README reports both).

A code made under a preset names it by its index in :data:`PRESETS` (see
:mod:`.header`), so presets are only ever appended, never reordered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PrequentialError
from .code import named_chunks
from .options import TrainOptions


@dataclass(frozen=True)
class Preset:
    """A configuration: the models switched between, how the chunks are cut and how each is fitted."""

    models: tuple[str, ...]
    options: TrainOptions
    #: the chunk schedule's name (:data:`momos.prequential.code.SCHEDULE_NAMES`)
    schedule: str
    #: configurations tried on MNIST to choose this one
    tried: int
    description: str

    def chunks(self, n: int) -> list[int]:
        """The chunk boundaries for ``n`` labels."""
        return named_chunks(self.schedule, n)

    @property
    def selection_bits(self) -> float:
        """log2 of the configurations tried: what naming the chosen one among them would cost."""
        return math.log2(self.tried)


PRESETS = {
    "best": Preset(models=("cnn",),
                   options=TrainOptions(calibrate=True, warm_start=True, anneal=True, augment=2, ensemble=3),
                   schedule="doubling", tried=16,
                   description="CNN, calibrated, warm-started, annealed, images shifted by up to 2 pixels, "
                               "3 networks averaged"),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise PrequentialError(f"unknown preset '{name}'; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def index(name: str) -> int:
    """The number a code's header names preset ``name`` by."""
    get(name)
    return list(PRESETS).index(name)


def by_index(i: int) -> Preset:
    """The preset a header names by number ``i``; PrequentialError if there is none."""
    if not 0 <= i < len(PRESETS):
        raise PrequentialError(f"corrupt prequential code: no preset {i}")
    return list(PRESETS.values())[i]


__all__ = ["Preset", "PRESETS", "get", "index", "by_index"]
