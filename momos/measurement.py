"""What a run measures each epoch: a snapshot of the weights, the estimators' context, and the job that scores them.

The trainer takes a :meth:`Measurement.job` after each epoch and runs it on
its estimator thread while training goes on; the job holds copies, so the
numbers are those of the epoch it was taken at.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from kcomplexity.callbacks import measure_estimates, split_estimates
from kcomplexity.estimators import Context, Estimator
from kcomplexity.sources import open_source

from . import qat
from .config import TrainConfig


class Measurement:
    """Scores a run's weights with its estimators; the context (loss, previous weights) is what they need."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, estimators: dict[str, Estimator],
                 loss_fn: Callable[[torch.nn.Module], float] | None) -> None:
        self.cfg, self.model, self.estimators, self.loss_fn = cfg, model, estimators, loss_fn
        needs = {n for est in estimators.values() for n in est.needs}
        self.keep_model, self.keep_previous = "model" in needs, "previous" in needs

    @staticmethod
    def needs_loss(estimators: dict[str, Estimator]) -> bool:
        return any("loss_fn" in est.needs for est in estimators.values())

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The weights the model computes with (q-bit quantised under QAT), copied to the CPU."""
        return {k: v.detach().to("cpu", copy=True) for k, v in qat.effective_weights(self.model).items()}

    def latent_snapshot(self) -> dict[str, torch.Tensor]:
        """The latent float weights QAT trains and MoMos projects (what the official code measures)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in qat.latent_weights(self.model).items()}

    def measures(self, epoch: int) -> bool:
        """Are the estimators run on this epoch? Every ``measure_every``-th, and always the first and the last,
        so a run's start and end are measured whatever N is."""
        return epoch % self.cfg.measure_every == 0 or epoch == self.cfg.epochs

    def job(self, epoch: int, weights: dict[str, torch.Tensor], mosaic: Any,
            previous: dict[str, torch.Tensor] | None) -> Callable[[], tuple[dict[str, Any], float]]:
        """Everything the estimator thread needs for this epoch, copied now: () -> (record fields, seconds);
        :meth:`skipped` on an epoch ``measure_every`` leaves out, with nothing copied.

        ``weights`` is this epoch's :meth:`snapshot`. The effective weights get the model copy, the fixed loss,
        the previous weights and q; the mosaic describes the latent weights, so under QAT it goes with the latent
        measurement, logged as ``complexity_latent`` / ``details_latent`` beside ``complexity`` / ``details``.
        """
        if not self.measures(epoch):
            return self.skipped
        qat_run = self.cfg.uses_qat
        context = Context(model=copy.deepcopy(self.model) if self.keep_model else None, loss_fn=self.loss_fn,
                          previous=list(open_source(previous, allow_nonfinite=True)) if previous is not None else None,
                          extra={"q": self.cfg.q} if qat_run else {"mosaic": mosaic})
        latent = self.latent_snapshot() if qat_run else None
        return lambda: self.complexity(weights, context, latent, Context(extra={"mosaic": mosaic, "q": self.cfg.q}))

    @staticmethod
    def skipped() -> tuple[dict[str, Any], float]:
        """The record fields of an epoch the estimators skip (``measure_every``): no complexity, no time."""
        return {"complexity": {}, "details": {}}, 0.0

    def complexity(self, weights: dict[str, torch.Tensor], context: Context,
                   latent: dict[str, torch.Tensor] | None = None, latent_context: Context | None = None
                   ) -> tuple[dict[str, Any], float]:
        """Every requested estimator through the registry: (record fields, seconds)."""
        t = time.perf_counter()
        if not self.estimators:
            return self.skipped()
        bits, details = split_estimates(measure_estimates(weights, self.estimators, whole=True, context=context))
        fields: dict[str, Any] = {"complexity": bits, "details": details}
        if latent is not None:
            fields["complexity_latent"], fields["details_latent"] = split_estimates(
                measure_estimates(latent, self.estimators, whole=True, context=latent_context))
        return fields, time.perf_counter() - t


__all__ = ["Measurement"]
