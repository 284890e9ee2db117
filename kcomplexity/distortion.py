"""The distortion a lossy code buys, summarised one way everywhere (estimators, rd, pack, reports)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: what every lossy code reports beside its bits (in the weights' own units)
DISTORTION = ("mse", "max_abs_err")


def summary(sse: float, n: int, max_abs_err: float, signal: float | None = None) -> dict[str, float]:
    """``mse`` and ``max_abs_err`` of ``n`` values whose squared errors sum to ``sse``; with the sum of the
    squared original values, ``snr_db`` too (infinite when nothing was lost)."""
    out = {"mse": sse / n if n else math.nan, "max_abs_err": float(max_abs_err)}
    if signal is not None:
        out["snr_db"] = 10 * math.log10(signal / sse) if sse > 0 and signal > 0 else math.inf
    return out


def combine(parts: Sequence[Mapping[str, Any]], numels: Sequence[int]) -> dict[str, float]:
    """The distortion of several tensors' codes together: mse weighted by their sizes, the largest error."""
    n = sum(numels)
    sse = math.fsum(p["mse"] * k for p, k in zip(parts, numels))
    return summary(sse, n, max((p["max_abs_err"] for p in parts), default=0.0))


__all__ = ["DISTORTION", "summary", "combine"]
