"""Training configuration: the paper's profiles per model, every value overridable."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import kcomplexity as kc

from kcomplexity.estimators.base import LOGGED

from . import augment, precision, recipes
from .data import DATASETS, PROFILES, check_preprocessing
from .errors import MoMosError
from .models import MODELS
from .projection import SCOPES, check_settings

METHODS = ("baseline", "qat", "momos", "momos+qat")
OPTIMIZERS = ("adamw", "sgd", "adam")
SCHEDULES = ("cosine", "constant")
#: what every profile starts from: one pass over the training data per epoch, batch 128, cosine schedule;
#: each model's registry entry (momos.models.register_model) overrides these
BASE_PROFILE = {"epochs": 20, "batch_size": 128, "schedule": "cosine", "steps_per_epoch": None, "beta2": 0.999,
                "best_by": "val_acc", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.0,
                "augment": "none", "normalize": "none", "image_size": None}
#: what a run stored before these fields existed meant: a resumed old run keeps training as it did
LEGACY = {"augment": "none", "normalize": "none", "image_size": None, "precision": "fp32", "recipe": None}
#: overrides for a model on a particular data set: digits has ~1,250 training images (10 batches an epoch), so
#: the paper MLP's 3e-4 stops at ~91 % test accuracy in 30 epochs; 1e-3 reaches 97 % (baseline) / 96.7 % (MoMos)
DATA_PROFILES: dict[tuple[str, str], dict[str, Any]] = {
    ("mlp", "digits"): {"lr": 1e-3},
    # the official MNIST run: 200 epochs, the best checkpoint by validation (= test set) loss
    ("mlp", "mnist-official"): {"epochs": 200, "best_by": "val_loss"},
}
BEST_BY = ("val_acc", "val_loss")
#: the widest model a run may ask for: an MLP's hidden matrices grow with the square of the width
MAX_WIDTH = 16384
#: the largest learning rate a run takes: far beyond any that trains, and one whose Adam step (lr over the
#: bias correction, up to 10 lr) still fits the float32 the optimisers compute it in (1e38 does not)
MAX_LR = 1e6
#: what a run logs: the logger's defaults and the paper's bound beside the real mosaic code
DEFAULT_ESTIMATORS = [*LOGGED, "mdl-paper"]


def _opt(default: Any, help: str, flags: tuple[str, ...] | None = None) -> Any:
    """A config field with its command-line help (and flags, when not ``--field-name``): one place for both."""
    return field(default=default, metadata={"help": help, **({"flags": flags} if flags else {})})


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` fields take the model's paper profile."""

    model: str = _opt("mlp", "model: " + ", ".join(MODELS))
    data: str = _opt("digits", "data set: " + ", ".join(DATASETS))
    method: str = _opt("baseline", "baseline | qat | momos | momos+qat")
    epochs: int | None = _opt(None, "epochs (profile: 20; grok-mlp 60; mnist-official 200)")
    batch_size: int | None = _opt(None, "global batch size (profile: 128; grok-mlp full batch)")
    steps_per_epoch: int | None = _opt(None, "optimiser steps per epoch (default: one pass over the data; grok-mlp 100)")
    optimizer: str | None = _opt(None, "adamw | sgd | adam (default: the model's profile)")
    lr: float | None = _opt(None, "learning rate (default: the model's profile)")
    weight_decay: float | None = _opt(None, "weight decay (default: the model's profile)")
    momentum: float | None = _opt(None, "SGD momentum (default: the model's profile)")
    beta2: float | None = _opt(None, "Adam/AdamW second-moment decay; beta1 is 0.9 (default 0.999; grok-mlp 0.98)")
    schedule: str | None = _opt(None, "cosine | constant (default: the model's profile)")
    best_by: str | None = _opt(None, "val_acc | val_loss: what picks best.safetensors (mnist-official: val_loss)")
    recipe: str | None = _opt(None, "paper: every value the MoMos paper's official configs set for this model and "
                                    "data set (200 epochs, optimiser, schedule, batch, augmentation, normalisation, "
                                    "image size); flags given explicitly override it")
    augment: str | None = _opt(None, "none | flip-crop: random horizontal flip and 4-pixel-padded crop of each "
                                     "training batch, drawn on the device from the run's seed (default: cifar10 "
                                     "flip-crop, others none)")
    normalize: str | None = _opt(None, "none | official: the data set's official per-channel Normalize "
                                       "(default: cifar10 official, others none)")
    image_size: int | None = _opt(None, "resize images to this square side, bilinear (default: as stored)")
    precision: str = _opt("fp32", "fp32 | bf16 | fp16: autocast for the forward passes (fp16 with a gradient "
                                  "scaler, CUDA only); weights stay float32")
    s: int = _opt(2, "MoMos block size s", ("-s", "--block-size"))
    capacity: float | None = _opt(0.05, "motifs as a fraction of blocks, in (0, 1]")
    k: int | None = _opt(None, "number of motifs (instead of --capacity)", ("-k",))
    force_zero: bool = _opt(True, "keep the zero block among the motifs", ("--no-force-zero",))
    scope: str = _opt("global", "global | tensor: one motif table for all tensors, or one per tensor")
    q: int = _opt(8, "QAT bits", ("-q",))
    qat_biases: bool = _opt(False, "QAT also quantises biases and other non-weight parameters "
                                   "(default: module.weight only, as the official code)")
    seed: int = _opt(0, "seed of the initialisation, shuffling, splits and motif draws")
    estimators: list[str] = field(default_factory=lambda: list(DEFAULT_ESTIMATORS), metadata={
        "help": "comma-separated estimators logged every epoch", "flags": ("--estimators", "-e")})
    measure_every: int = _opt(1, "run the estimators every N epochs (and on epochs 0 and the last); the others are "
                                 "logged without complexity. Each measurement costs about one MNIST-MLP epoch on "
                                 "2 cores, so N sets the logging overhead")
    val_fraction: float = _opt(0.1, "fraction of the training data held out for validation (mnist, cifar10, ...)")
    data_dir: str | None = _opt(None, "folder with data files (idx MNIST, torchvision data sets)")
    download: bool = _opt(False, "let torchvision download fashion-mnist/cifar10")
    limit: int | None = _opt(None, "use at most this many training examples")
    width: int | None = _opt(None, "model width (MLP hidden units, ResNet base channels, ViT dim)")
    device: str = _opt("cpu", "cpu, cuda or cuda:N")
    devices: int = _opt(1, "processes (gloo on CPU) or GPUs (nccl) training together; the batch size stays global")
    threads: int | None = _opt(None, "torch intra-op threads of this run (default: torch's choice); part of the "
                                     "recipe, since CPU results can differ in the last bits between thread counts")
    modulus: int = _opt(97, "modadd: the modulus p")
    train_fraction: float = _opt(0.4, "modadd: fraction of the p*p pairs to train on")

    @property
    def uses_momos(self) -> bool:
        return self.method in ("momos", "momos+qat")

    @property
    def uses_qat(self) -> bool:
        return self.method in ("qat", "momos+qat")

    def resolved(self) -> "TrainConfig":
        """A validated copy with the profile's defaults filled in; every problem is one MoMosError."""
        _check_types(self)
        if self.model not in MODELS:
            raise MoMosError(f"unknown model '{self.model}'; available: {', '.join(MODELS)}")
        if self.data not in DATASETS:
            raise MoMosError(f"unknown data set '{self.data}'; available: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise MoMosError(f"unknown method '{self.method}'; available: {', '.join(METHODS)}")
        profile = {**BASE_PROFILE, **MODELS[self.model].profile, **PROFILES.get(self.data, {}),
                   **DATA_PROFILES.get((self.model, self.data), {}), **recipes.values(self.recipe, self.model, self.data)}
        filled = {k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in profile.items()}
        cfg = dataclasses.replace(self, **filled)
        if cfg.best_by not in BEST_BY:
            raise MoMosError(f"best_by must be one of {', '.join(BEST_BY)}, got {cfg.best_by!r}")
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
        _check_ranges(cfg)
        augment.check(cfg.augment, cfg.data, tokens=MODELS[cfg.model].tokens)
        check_preprocessing(cfg.data, cfg.normalize, cfg.image_size)  # a DataError is a MoMosError
        precision.check(cfg.precision, cfg.device)
        if cfg.estimators:  # unknown names fail now, listing the valid ones; [] logs no estimator
            kc.estimators.resolve(cfg.estimators)
        return cfg

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default value (None where the model's profile decides)."""
        return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise MoMosError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "TrainConfig":
        """The config a run directory stored: a field it predates takes the value that run trained with."""
        return cls.from_json({**LEGACY, **data})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


_INTS = ("epochs", "batch_size", "steps_per_epoch", "s", "k", "q", "seed", "limit", "width", "modulus", "devices",
         "threads", "measure_every", "image_size")
_FLOATS = ("lr", "weight_decay", "momentum", "beta2", "capacity", "val_fraction", "train_fraction")
_STRS = ("model", "data", "method", "optimizer", "schedule", "scope", "device", "data_dir", "best_by", "recipe",
         "augment", "normalize", "precision")


def _check_types(cfg: TrainConfig) -> None:
    for name in _INTS:
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise MoMosError(f"{name} must be an integer, got {v!r}")
    for name in _FLOATS:
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise MoMosError(f"{name} must be a number, got {v!r}")
    for name in _STRS:
        v = getattr(cfg, name)
        if v is not None and not isinstance(v, str):
            raise MoMosError(f"{name} must be a string, got {v!r}")
    if not isinstance(cfg.estimators, (list, tuple)) or not all(isinstance(e, str) for e in cfg.estimators):
        raise MoMosError(f"estimators must be a list of names, got {cfg.estimators!r}")


def _check_ranges(cfg: TrainConfig) -> None:
    """Numbers a run cannot use, and a device this machine does not have."""
    checks = [
        ("lr", cfg.lr, lambda v: 0 < v <= MAX_LR, f"in (0, {MAX_LR:g}]"),
        ("weight_decay", cfg.weight_decay, lambda v: 0 <= v < math.inf, "finite and >= 0"),
        ("momentum", cfg.momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("beta2", cfg.beta2, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("seed", cfg.seed, lambda v: 0 <= v < 2 ** 32, "in 0..2**32-1"),
        ("limit", cfg.limit, lambda v: v >= 1, ">= 1 (or unset)"),
        ("width", cfg.width, lambda v: 1 <= v <= MAX_WIDTH, f"in 1..{MAX_WIDTH} (or unset; memory grows with its "
                                                             "square)"),
        ("devices", cfg.devices, lambda v: 1 <= v <= 256, "in 1..256"),
        ("threads", cfg.threads, lambda v: 1 <= v <= 1024, "in 1..1024 (or unset)"),
        ("measure_every", cfg.measure_every, lambda v: v >= 1, ">= 1 (1: every epoch)"),
        ("val_fraction", cfg.val_fraction, lambda v: 0 < v < 0.5, "in (0, 0.5)"),
    ]
    for name, value, ok, allowed in checks:
        if value is not None and not ok(value):  # NaN fails every comparison, so it lands here too
            raise MoMosError(f"{name} must be {allowed}, got {value}")
    check_device(cfg.device)


def check_device(name: str) -> None:
    """MoMosError unless ``name`` is a device this machine can train on."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise MoMosError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MoMosError(f"device '{name}' is not available here (no CUDA device); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MoMosError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s))")
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise MoMosError(f"cannot train on device '{name}' here; use cpu" + (" or cuda" if torch.cuda.is_available() else ""))
