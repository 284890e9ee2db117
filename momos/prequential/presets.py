"""Named prequential configurations: models, chunk boundaries and fitting options chosen once, by name.

A preset was picked among the configurations tried on MNIST; that choice is
information too, and :attr:`Preset.tried` says how many there were, so a
reader can charge ``log2(tried)`` bits for it (the README reports both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PrequentialError
from .code import default_chunks, split_last
from .options import TrainOptions


@dataclass(frozen=True)
class Preset:
    """A configuration: the models switched between, how the chunks are cut and how each is fitted."""

    models: tuple[str, ...]
    options: TrainOptions
    #: cut the last chunk of the doubling schedule in two halves, so its second half is coded by a network
    #: trained on more labels (the last chunk holds nearly half of them)
    split_last: bool
    #: configurations tried on MNIST to choose this one
    tried: int
    description: str

    def chunks(self, n: int) -> list[int]:
        """The chunk boundaries for ``n`` labels."""
        return split_last(n) if self.split_last else default_chunks(n)

    @property
    def selection_bits(self) -> float:
        """log2 of the configurations tried: what naming the chosen one among them would cost."""
        return math.log2(self.tried)


PRESETS = {
    "best": Preset(models=("cnn",),
                   options=TrainOptions(calibrate=True, warm_start=True, anneal=True, augment=2, ensemble=3),
                   split_last=False, tried=13,
                   description="CNN, calibrated, warm-started, annealed, images shifted by up to 2 pixels, "
                               "3 networks averaged"),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise PrequentialError(f"unknown preset '{name}'; available: {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["Preset", "PRESETS", "get"]
