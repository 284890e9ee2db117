"""Complexity logging for any training loop, plus thin Lightning and Hugging Face adapters.

``ComplexityLogger(estimators, path).log(model, epoch=e)`` scores the
model's trainable weights with every requested estimator (concatenated, as
the MoMos paper measures) and appends one JSON line per call to ``path``;
each line is flushed and fsynced when written.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import NotApplicableError
from .estimators.base import Estimator, resolve
from .scoring import score
from .sources import open_source

DEFAULT_ESTIMATORS = ("lzma", "zstd", "bdm", "mdl")


def measure(source: Any, estimators: Any = DEFAULT_ESTIMATORS, whole: bool = True) -> dict[str, float | None]:
    """Total bits per estimator label for ``source`` (None where an estimator does not apply).

    With ``whole=True`` (the MoMos paper's measurement) only the estimate of
    all tensors concatenated is computed, not the per-tensor rows.
    """
    if not whole:
        report = score(source, estimators)
        return {k: (None if math.isnan(v) else float(v)) for k, v in report.total.items()}
    arrays = list(open_source(source))
    out: dict[str, float | None] = {}
    for label, est in resolve(estimators).items():
        try:
            out[label] = float(est.bits_whole(arrays))
        except NotApplicableError:
            out[label] = None
    return out


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning."""
    line = json.dumps(record, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


class ComplexityLogger:
    """Logs every requested estimator on a model's weights, one JSON line per call."""

    def __init__(self, estimators: str | Sequence[str | Estimator] = DEFAULT_ESTIMATORS,
                 path: str | Path | None = None, whole: bool = True) -> None:
        self.estimators = resolve(estimators)  # validated now, not at the first epoch
        self.path = Path(path) if path is not None else None
        self.whole = whole
        self.records: list[dict[str, Any]] = []

    def log(self, model: Any, epoch: int, **extra: Any) -> dict[str, Any]:
        """Score ``model`` now; append ``{"epoch", "complexity": {est: bits}, "estimators_s", **extra}``."""
        t = time.perf_counter()
        bits = measure(model, self.estimators, whole=self.whole)
        record = {"epoch": int(epoch), "complexity": bits, "estimators_s": time.perf_counter() - t, **extra}
        self.records.append(record)
        if self.path is not None:
            append_jsonl(self.path, record)
        return record


def lightning_callback(logger: ComplexityLogger, package: str = "lightning.pytorch") -> Any:
    """A Lightning ``Callback`` that logs at every training-epoch end.

    ``package`` is ``"lightning.pytorch"`` or ``"pytorch_lightning"``: their
    Callback classes are different, so use the one your Trainer comes from.
    """
    import importlib

    base = importlib.import_module(package).Callback

    class ComplexityCallback(base):  # type: ignore[misc, valid-type]
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            logger.log(pl_module, epoch=int(trainer.current_epoch))

    return ComplexityCallback()


def hf_callback(logger: ComplexityLogger) -> Any:
    """A Hugging Face ``TrainerCallback`` that logs at every epoch end (model from ``kwargs["model"]``)."""
    from transformers import TrainerCallback

    class ComplexityCallback(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logger.log(kwargs["model"], epoch=int(round(state.epoch or 0)))

    return ComplexityCallback()
