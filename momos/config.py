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
#: what every profile starts from: one pass over the training data per epoch, batch 128, cosine schedule
_BASE = {"epochs": 20, "batch_size": 128, "schedule": "cosine", "steps_per_epoch": None, "beta2": 0.999}
#: training profiles per model (the paper's for mlp/resnet20/vit); a None field of TrainConfig takes these
PROFILES: dict[str, dict[str, Any]] = {
    "mlp": {**_BASE, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "momentum": 0.0},
    "resnet20": {**_BASE, "optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9},
    "vit": {**_BASE, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-2, "momentum": 0.0},
    # grokking modular addition (DeMoss et al. 2024 setup): full batch, AdamW betas (0.9, 0.98),
    # weight decay 1.0, constant lr; an epoch is 100 steps, so 60 epochs = 6,000 steps
    "grok-mlp": {**_BASE, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1.0, "momentum": 0.0, "beta2": 0.98,
                 "epochs": 60, "batch_size": 4096, "schedule": "constant", "steps_per_epoch": 100},
}
DEFAULT_ESTIMATORS = ["lzma", "zstd", "bdm", "mdl", "mdl-paper"]


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` fields take the model's paper profile."""

    model: str = "mlp"
    data: str = "digits"
    method: str = "baseline"
    epochs: int | None = None
    batch_size: int | None = None
    #: optimiser steps per epoch; None = one pass over the training data
    steps_per_epoch: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    #: Adam/AdamW's second-moment decay (beta1 is 0.9)
    beta2: float | None = None
    schedule: str | None = None
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
    #: modadd only: the modulus p and the fraction of the p*p pairs used for training
    modulus: int = 97
    train_fraction: float = 0.4

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
        filled = {k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in PROFILES[self.model].items()}
        cfg = dataclasses.replace(self, **filled)
        if cfg.schedule not in SCHEDULES:
            raise MoMosError(f"unknown schedule '{cfg.schedule}'; available: {', '.join(SCHEDULES)}")
        if int(cfg.epochs) < 0 or int(cfg.batch_size) < 1:
            raise MoMosError("epochs must be >= 0 and batch_size >= 1")
        if cfg.steps_per_epoch is not None and int(cfg.steps_per_epoch) < 1:
            raise MoMosError(f"steps_per_epoch must be >= 1 (or unset for one pass), got {cfg.steps_per_epoch}")
        if not 0.0 <= float(cfg.beta2) < 1.0:
            raise MoMosError(f"beta2 must lie in [0, 1), got {cfg.beta2}")
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
