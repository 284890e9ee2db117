"""``score()``: run estimators over every tensor of a source and collect a :class:`Report`."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from .errors import NotApplicableError
from .estimators.base import Estimator, resolve
from .report import Report
from .sources import NamedArray, open_source

DEFAULT_ESTIMATORS = ("lzma", "zstd")


def score(
    source: Any,
    estimators: str | Estimator | Sequence[str | Estimator] | Mapping[str, Estimator] = DEFAULT_ESTIMATORS,
    whole: bool = False,
    include_buffers: bool = False,
    allow_nonfinite: bool = False,
    progress: bool = False,
) -> Report:
    """Estimate the description length of every tensor in ``source``, in bits.

    ``source`` is anything :func:`kcomplexity.sources.open_source` reads.
    Per-tensor figures are always computed; ``total`` is their sum, or with
    ``whole=True`` the estimate for all tensors concatenated in order (the
    MoMos paper's measurement). Files are read one tensor at a time unless
    ``whole=True`` needs them all.
    """
    ests = resolve(estimators)
    src = open_source(source, include_buffers=include_buffers, allow_nonfinite=allow_nonfinite)
    names: list[str] = []
    numel: dict[str, int] = {}
    dtypes: dict[str, str] = {}
    raw_bits: dict[str, int] = {}
    bits: dict[str, dict[str, float]] = {e: {} for e in ests}
    breakdown: dict[str, dict[str, dict[str, float]]] = {}
    kept: list[NamedArray] = []
    bar = tqdm(src, total=len(src), desc="scoring", unit="tensor", disable=not progress or len(src) < 2, leave=False)
    for a in bar:
        bar.set_postfix_str(a.name[-40:], refresh=False)
        names.append(a.name)
        numel[a.name], dtypes[a.name], raw_bits[a.name] = a.numel, a.dtype, a.raw_bits
        for label, est in ests.items():
            bits[label][a.name], extra = _score_one(est, a)
            if extra is not None:
                breakdown.setdefault(label, {})[a.name] = extra
        if whole:
            kept.append(a)
        del a  # keep at most one tensor alive while the next one is read
    if whole:
        total = {label: _try(lambda: est.bits_whole(kept)) for label, est in ests.items()}
    else:
        total = {label: math.fsum(v for v in col.values() if not math.isnan(v)) for label, col in bits.items()}
    return Report(
        names=names, numel=numel, dtypes=dtypes, raw_bits=raw_bits, bits=bits, total=total, whole=whole,
        settings={label: {"name": est.name, **est.settings()} for label, est in ests.items()},
        kinds={label: est.kind for label, est in ests.items()}, breakdown=breakdown,
    )


def _score_one(est: Estimator, a: NamedArray) -> tuple[float, dict[str, float] | None]:
    try:
        extra = est.breakdown(a)
        return (math.fsum(extra.values()) if extra is not None else est.bits(a)), extra
    except NotApplicableError:
        return math.nan, None


def _try(fn: Any) -> float:
    try:
        return float(fn())
    except NotApplicableError:
        return math.nan
