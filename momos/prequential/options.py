"""How each chunk's model is fitted: one dataclass, which also generates the command line's options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PrequentialError

#: every HOLDOUT-th example of the order is held out for early stopping (and calibration)
HOLDOUT = 10
#: the largest shift --augment takes: images are at most 32 pixels wide, and each batch is padded by it
MAX_AUGMENT = 16
#: bounds on the other options: beyond them a chunk's fitting would run for days or exhaust memory, and a
#: decoder reading a damaged header must not start such a run
MAX_ENSEMBLE, MAX_EPOCHS, MAX_BATCH = 16, 1000, 1 << 16


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainOptions:
    """How each chunk's model is fitted (validated on construction: PrequentialError)."""

    max_epochs: int = _opt(50, "most epochs per chunk")
    patience: int = _opt(3, "epochs without held-out improvement before stopping")
    lr: float = _opt(1e-3, "Adam learning rate")
    batch_size: int = _opt(32, "batch size")
    calibrate: bool = _opt(False, "fit a softmax temperature on the held-out labels")
    warm_start: bool = _opt(False, "continue from the previous chunk's model")
    anneal: bool = _opt(False, "after an epoch without held-out improvement, return to the best epoch and divide "
                               "the lr by 3")
    augment: int = _opt(0, "shift each training image by up to this many pixels each way, at random (0: off)")
    ensemble: int = _opt(1, "networks per model and chunk (different seeds), their predictions averaged")

    def __post_init__(self) -> None:
        for name, top in (("max_epochs", MAX_EPOCHS), ("patience", MAX_EPOCHS), ("batch_size", MAX_BATCH)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise PrequentialError(f"{name} must be a whole number in 1..{top:,}, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 10:
            raise PrequentialError(f"lr must be a number in (0, 10], got {self.lr!r}")
        if not 0 <= self.augment <= MAX_AUGMENT:
            raise PrequentialError(f"augment is a shift in pixels, in 0..{MAX_AUGMENT} (a padded copy of every "
                                   f"batch grows with it), got {self.augment}")
        if not 1 <= self.ensemble <= MAX_ENSEMBLE:
            raise PrequentialError(f"ensemble is a number of networks, in 1..{MAX_ENSEMBLE} (each trains on every "
                                   f"chunk), got {self.ensemble}")
        object.__setattr__(self, "lr", float(self.lr))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {name: f.default for name, f in cls.__dataclass_fields__.items()}


__all__ = ["TrainOptions", "HOLDOUT", "MAX_AUGMENT", "MAX_ENSEMBLE", "MAX_EPOCHS", "MAX_BATCH"]
