"""Estimators at a stated precision: lossy code lengths that carry the distortion they buy.

* ``quant``: each tensor uniformly quantised (step = ``rel`` x its RMS, or
  ``delta``) and entropy-coded (:mod:`kcomplexity.codecs.quant`); bits are
  ``len(code) * 8`` and details hold ``mse`` and ``max_abs_err``.
* ``tcq``: like ``quant``, by trellis-coded quantisation with context-modelled
  ANS (:mod:`kcomplexity.codecs.tcq`): fewer bits at the same MSE, every
  value within 2 steps.
* ``delta``: information per step, the conditional code of the weights
  given the previous logged weights: each tensor's difference
  ``w_t - w_(t-1)`` quantised on the grid of ``quant`` for ``w_t``
  (step = ``rel`` x RMS of ``w_t``), so a decoder holding ``w_(t-1)``
  rebuilds ``w_t`` within step/2. Needs ``Context.previous``.
* ``intrinsic``: the code at the coarsest global ``rel`` whose loss stays
  within a budget (:func:`kcomplexity.intrinsic.intrinsic`). Needs
  ``Context.model`` and ``Context.loss_fn``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..distortion import combine, summary
from ..errors import EstimatorSettingError, MissingContextError
from ..codecs.quant import QuantizedCode, check_precision, code_quantized
from ..codecs.tcq import DEFAULT_LAM, code_tcq
from ..sources import NamedArray
from .base import Context, Estimate, Estimator, Setting, register

#: quant's default precision: step = RMS / 10, i.e. a signal-to-quantisation-noise ratio of about 31 dB
DEFAULT_REL = 0.1


def summarise(codes: Sequence[QuantizedCode]) -> Estimate:
    """Total bits of several tensors' codes with their joint distortion (MSE over all values, max error)."""
    details = summary(math.fsum(c.sse for c in codes), sum(c.numel for c in codes),
                      max(c.max_abs_err for c in codes), math.fsum(c.signal for c in codes))
    return Estimate(float(sum(c.bits for c in codes)), details)


_POSITIVE = Setting(float, "> 0", lambda v: v > 0)


class Quant(Estimator):
    """Registered as ``quant``."""

    SETTINGS = {"rel": Setting(float, "> 0 (step / RMS)", lambda v: v > 0, optional=True),
                "delta": Setting(float, "> 0 (absolute step)", lambda v: v > 0, optional=True),
                "rdoq": Setting(float, ">= 0 (rate-distortion optimised levels: a bit weighs rdoq squared steps; "
                                       "0: nearest level)", lambda v: v >= 0)}
    name = "quant"
    kind = "lossy code length"

    def __init__(self, rel: float | None = None, delta: float | None = None, rdoq: float = 0.0) -> None:
        self.rdoq = self._set_step(rel, delta, rdoq=rdoq)["rdoq"]
        self.description = ("uniform quantisation per tensor (step = rel x RMS, or delta) + the shortest of "
                            "order-0 / Gaussian / Laplace ANS codes and zstd; details: mse, max_abs_err")

    def _set_step(self, rel: float | None, delta: float | None, **extra: Any) -> dict[str, Any]:
        """Validate the step (``rel`` DEFAULT_REL when neither is given) with the ``extra`` settings, set
        ``rel``/``delta``, and return the validated values."""
        if rel is None and delta is None:
            rel = DEFAULT_REL
        v = self._validated(rel=rel, delta=delta, **extra)
        self.rel, self.delta = check_precision(v["rel"], v["delta"])
        return v

    def _step_settings(self) -> dict[str, Any]:
        return {"rel": self.rel} if self.rel is not None else {"delta": self.delta}

    def settings(self) -> dict[str, Any]:
        step = self._step_settings()
        return {**step, "rdoq": self.rdoq} if self.rdoq else step

    def code(self, a: NamedArray) -> QuantizedCode:
        return code_quantized(a, rel=self.rel, delta=self.delta, rdoq=self.rdoq)

    def estimate(self, a: NamedArray) -> Estimate:
        c = self.code(a)
        return Estimate(float(c.bits), {"mse": c.mse, "max_abs_err": c.max_abs_err, "step": c.step,
                                        "method": c.method})

    def _bits(self, a: NamedArray) -> float:
        return float(self.code(a).bits)

    def encode(self, a: NamedArray) -> bytes:
        return self.code(a).data

    def decode(self, data: bytes, like: NamedArray | None = None) -> NamedArray:
        """Every value within step/2 of the original (its container header holds dtype and shape)."""
        from ..codecs import QuantCodec

        return QuantCodec(rel=1.0).decode(data)  # the step is read from the code

    def combine(self, parts: Sequence[Estimate], numels: Sequence[int]) -> Estimate:
        return Estimate(math.fsum(p.bits for p in parts), combine([p.details for p in parts], numels))

    def bits_whole(self, arrays: Sequence[NamedArray]) -> float:
        return self.estimate_whole(arrays).bits

    def estimate_whole(self, arrays: Sequence[NamedArray], context: Context | None = None) -> Estimate:
        """Each tensor on its own grid (the step is per tensor); the codes laid end to end."""
        return summarise([self.code(a) for a in arrays])


class Tcq(Quant):
    """Registered as ``tcq``."""

    SETTINGS = {"rel": Quant.SETTINGS["rel"], "delta": Quant.SETTINGS["delta"],
                "lam": Setting(float, ">= 0 (the trellis search's weight of a bit, in squared steps)",
                               lambda v: v >= 0)}
    name = "tcq"

    def __init__(self, rel: float | None = None, delta: float | None = None, lam: float = DEFAULT_LAM) -> None:
        self.lam = self._set_step(rel, delta, lam=lam)["lam"]
        self.description = ("trellis-coded (dependent) quantisation per tensor (step = rel x RMS, or delta; every "
                            "value within 2 steps) + ANS with a table per quantiser and row-scale class; details: "
                            "mse, max_abs_err")

    def settings(self) -> dict[str, Any]:
        return {**self._step_settings(), "lam": self.lam}

    def code(self, a: NamedArray) -> QuantizedCode:
        return code_tcq(a, rel=self.rel, delta=self.delta, lam=self.lam)

    def decode(self, data: bytes, like: NamedArray | None = None) -> NamedArray:
        """Every value within 2 steps of the original (its container header holds dtype and shape)."""
        from ..codecs import TcqCodec

        return TcqCodec(rel=1.0).decode(data)  # the step is read from the code


class Delta(Estimator):
    """Registered as ``delta``."""

    SETTINGS = {"rel": _POSITIVE}
    name = "delta"
    kind = "lossy code length"
    needs = ("previous",)

    def __init__(self, rel: float = DEFAULT_REL) -> None:
        self.rel = self._validated(rel=rel)["rel"]
        self.description = ("information per step: quantised code of w_t - w_(t-1) on quant's grid for w_t "
                            "(step = rel x RMS of w_t); needs the previous weights")

    def _bits(self, a: NamedArray) -> float:  # pragma: no cover - estimate() refuses first
        raise MissingContextError("delta needs the previous weights")

    def estimate_whole(self, arrays: Sequence[NamedArray], context: Context | None = None) -> Estimate:
        previous = {p.name: p for p in self.require(context).previous}
        codes = []
        for a in arrays:
            prev = previous.get(a.name)
            if prev is None or prev.shape != a.shape:
                raise EstimatorSettingError(f"delta: the previous weights have no tensor '{a.name}' of shape {a.shape}")
            cur = a.values().astype(np.float64)
            rms = float(np.sqrt(np.mean(cur * cur)))
            step = self.rel * rms if rms > 0 else 1.0
            codes.append(code_quantized(cur - prev.values().astype(np.float64), delta=step))
        return summarise(codes)


class Intrinsic(Estimator):
    """Registered as ``intrinsic``."""

    SETTINGS = {"eps": _POSITIVE, "relative": Setting(bool), "max_evals": Setting(int, ">= 3", lambda v: v >= 3),
                "search": Setting(str, "grid (coarse-to-fine scan, then bisection) or bisect",
                                  lambda v: v in ("grid", "bisect")),
                "allocation": Setting(str, "global (one rel), tensor (then each tensor coarsened within budget) or "
                                           "row (then also each matrix's rows, in groups by norm)",
                                      lambda v: v in ("global", "tensor", "row")),
                "low_rank": Setting(bool, "also try each matrix as a truncated SVD (global allocation only)")}
    name = "intrinsic"
    kind = "lossy code length"
    needs = ("model", "loss_fn")

    def __init__(self, eps: float = 0.1, relative: bool = False, max_evals: int = 24, search: str = "grid",
                 allocation: str = "global", low_rank: bool = False) -> None:
        from ..errors import IntrinsicError
        from ..intrinsic import check_budget

        v = self._validated(eps=eps, relative=relative, max_evals=max_evals, search=search, allocation=allocation,
                            low_rank=low_rank)
        self.search, self.allocation, self.low_rank = v["search"], v["allocation"], v["low_rank"]
        if self.low_rank and self.allocation != "global":
            raise EstimatorSettingError("intrinsic: low_rank searches rank and one global step together; use "
                                        "allocation=global")
        try:
            self.eps, self.relative, self.max_evals = check_budget(v["eps"], v["relative"], v["max_evals"])
        except IntrinsicError as exc:
            raise EstimatorSettingError(f"intrinsic: {exc}") from None
        self.description = ("quant's code at the coarsest global rel whose loss stays within loss + eps "
                            "(DeMoss et al. 2024); needs a model and a loss closure")

    def _bits(self, a: NamedArray) -> float:  # pragma: no cover - estimate() refuses first
        raise MissingContextError("intrinsic needs a model and a loss closure")

    def estimate_whole(self, arrays: Sequence[NamedArray], context: Context | None = None) -> Estimate:
        from ..intrinsic import intrinsic

        context = self.require(context)
        r = intrinsic(context.model, context.loss_fn, eps=self.eps, relative=self.relative, max_evals=self.max_evals,
                      search=self.search, allocation=self.allocation, low_rank=self.low_rank)
        return Estimate(float(r.bits), r.details())


register("quant", Quant)
register("tcq", Tcq)
register("delta", Delta)
register("intrinsic", Intrinsic)

__all__ = ["Quant", "Delta", "Intrinsic", "DEFAULT_REL", "summarise"]
