"""Training configuration: the paper's profiles per model, every value overridable."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import kcomplexity as kc

from .data import DATASETS
from .errors import MoMosError
from .models import MODELS
from .projection import SCOPES, check_settings

METHODS = ("baseline", "qat", "momos", "momos+qat")
OPTIMIZERS = ("adamw", "sgd", "adam")
SCHEDULES = ("cosine", "constant")
#: the paper's training profiles (optimiser, learning rate, weight decay, momentum)
PROFILES: dict[str, dict[str, Any]] = {
    "mlp": {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "momentum": 0.0},
    "resnet20": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9},
    "vit": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-2, "momentum": 0.0},
}
DEFAULT_ESTIMATORS = ["lzma", "zstd", "bdm", "mdl", "mdl-paper"]


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` fields take the model's paper profile."""

    model: str = "mlp"
    data: str = "digits"
    method: str = "baseline"
    epochs: int = 20
    batch_size: int = 128
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    schedule: str = "cosine"
    s: int = 2
    capacity: float | None = 0.05
    k: int | None = None
    force_zero: bool = True
    scope: str = "global"
    q: int = 8
    seed: int = 0
    estimators: list[str] = field(default_factory=lambda: list(DEFAULT_ESTIMATORS))
    val_fraction: float = 0.1
    data_dir: str | None = None
    download: bool = False
    limit: int | None = None
    width: int | None = None
    device: str = "cpu"

    @property
    def uses_momos(self) -> bool:
        return self.method in ("momos", "momos+qat")

    @property
    def uses_qat(self) -> bool:
        return self.method in ("qat", "momos+qat")

    def resolved(self) -> "TrainConfig":
        """A validated copy with the profile's defaults filled in."""
        if self.model not in MODELS:
            raise MoMosError(f"unknown model '{self.model}'; available: {', '.join(MODELS)}")
        if self.data not in DATASETS:
            raise MoMosError(f"unknown data set '{self.data}'; available: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise MoMosError(f"unknown method '{self.method}'; available: {', '.join(METHODS)}")
        if self.schedule not in SCHEDULES:
            raise MoMosError(f"unknown schedule '{self.schedule}'; available: {', '.join(SCHEDULES)}")
        if int(self.epochs) < 0 or int(self.batch_size) < 1:
            raise MoMosError("epochs must be >= 0 and batch_size >= 1")
        filled = {k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in PROFILES[self.model].items()}
        cfg = dataclasses.replace(self, **filled)
        if cfg.optimizer not in OPTIMIZERS:
            raise MoMosError(f"unknown optimizer '{cfg.optimizer}'; available: {', '.join(OPTIMIZERS)}")
        if cfg.k is not None:
            cfg.capacity = None
        check_settings(cfg.s, cfg.capacity, cfg.k, cfg.scope if cfg.scope in SCOPES else "global")
        if cfg.scope not in SCOPES:
            raise MoMosError(f"unknown scope '{cfg.scope}'; allowed: {', '.join(SCOPES)}")
        if cfg.uses_qat and not 2 <= int(cfg.q) <= 16:
            raise MoMosError(f"QAT needs q in 2..16 bits, got {cfg.q}")
        if cfg.estimators:  # unknown names fail now, listing the valid ones; [] logs no estimator
            kc.estimators.resolve(cfg.estimators)
        return cfg

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MoMosError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)
