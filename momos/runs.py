"""What a run is, apart from training it: its data, its model, its result, and reading a finished one back.

The trainer, the two-part code, ``compare`` and the sweep all build a run's
model and data through here, so none of them imports the trainer.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, data, models, qat, rundir
from .config import TrainConfig
from .errors import RunError


@dataclass
class RunResult:
    """What a finished run reports; the same is in ``RUN_DIR/result.json``."""

    run_dir: Path
    test_acc: float
    test_acc_final: float
    best_epoch: int
    best_val_acc: float
    final: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "test_acc": self.test_acc, "test_acc_final": self.test_acc_final,
                "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc, "final": self.final}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("kcomplexity", "torch", "numpy", "scipy", "zstandard", "pybdm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out




def load_data(cfg: TrainConfig, download: bool | None = None) -> data.DataSet:
    """The data set of a run, split as the run splits it."""
    return data.load(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, data_dir=cfg.data_dir,
                     download=cfg.download if download is None else download, limit=cfg.limit,
                     modulus=cfg.modulus, train_fraction=cfg.train_fraction, normalize=cfg.normalize or "none",
                     image_size=cfg.image_size)


def build_model(cfg: TrainConfig, ds: data.DataSet, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The run's model for its data (or ``model``, your own), with QAT attached as the run trains it."""
    if model is None:
        model = models.build(cfg.model, ds.input_shape, ds.num_classes, cfg.width, tokens=ds.tokens)
    if cfg.uses_qat:
        qat.attach(model, cfg.q, weights_only=not cfg.qat_biases)
    return model


def architecture(cfg: TrainConfig) -> str:
    """What a decoder needs to build a run's model before loading its weights, as compact text (the two-part
    code counts its bytes): the model, its data set (input shape, classes), width and modulus."""
    import json

    spec = {"model": cfg.model, "data": cfg.data, "width": cfg.width, "modulus": cfg.modulus}
    if cfg.image_size is not None:  # only when set: the runs before it existed keep their code's length
        spec["image_size"] = cfg.image_size
    return json.dumps(spec, separators=(",", ":"), sort_keys=True)


def load_run_model(run_dir: str | Path) -> tuple[torch.nn.Module, data.DataSet]:
    """A run's model holding its last checkpoint's weights, and its data set (never downloaded)."""
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_stored(rundir.stored_config(run_dir)).resolved()
    ds = load_data(cfg, download=False)
    model = build_model(cfg, ds)
    checkpoint.load(run_dir / "checkpoints", model)
    return model, ds


def rundir_result(run_dir: Path) -> RunResult:
    """The RunResult rank 0 wrote to ``result.json``."""
    r = rundir.read_result(run_dir)
    if r is None:
        raise RunError(f"{run_dir} has no result.json: the ranks did not finish")
    return RunResult(Path(r["run_dir"]), r["test_acc"], r["test_acc_final"], r["best_epoch"], r["best_val_acc"],
                     r["final"])


__all__ = ["RunResult", "versions", "load_data", "build_model", "load_run_model", "rundir_result", "architecture"]
