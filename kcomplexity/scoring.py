"""``score()``: run estimators over every tensor of a source and collect a :class:`Report`."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from .errors import NotApplicableError
from .estimators.base import Estimate, Estimator, resolve
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
    estimates: dict[str, dict[str, Estimate]] = {e: {} for e in ests}
    breakdown: dict[str, dict[str, dict[str, float]]] = {}
    kept: list[NamedArray] = []
    bar = tqdm(src, total=len(src), desc="scoring", unit="tensor", disable=not progress or len(src) < 2, leave=False)
    for a in bar:
        bar.set_postfix_str(a.name[-40:], refresh=False)
        names.append(a.name)
        numel[a.name], dtypes[a.name], raw_bits[a.name] = a.numel, a.dtype, a.raw_bits
        for label, est in ests.items():
            estimates[label][a.name], extra = _score_one(est, a)
            bits[label][a.name] = estimates[label][a.name].bits
            if extra is not None:
                breakdown.setdefault(label, {})[a.name] = extra
        if whole:
            kept.append(a)
        del a  # keep at most one tensor alive while the next one is read
    totals = {}
    for label, est in ests.items():
        if whole:
            totals[label] = _try(lambda: est.estimate_whole(kept))
        else:
            parts = [(e, numel[name]) for name, e in estimates[label].items() if not math.isnan(e.bits)]
            totals[label] = est.combine([e for e, _ in parts], [k for _, k in parts]) if parts else Estimate(math.nan)
    details = {label: {name: dict(e.details) for name, e in col.items() if e.details}
               for label, col in estimates.items()}
    return Report(
        names=names, numel=numel, dtypes=dtypes, raw_bits=raw_bits, bits=bits,
        total={label: t.bits for label, t in totals.items()}, whole=whole,
        settings={label: {"name": est.name, **est.settings()} for label, est in ests.items()},
        kinds={label: est.kind for label, est in ests.items()}, breakdown=breakdown,
        details={label: col for label, col in details.items() if col},
        total_details={label: dict(t.details) for label, t in totals.items() if t.details},
    )


def _score_one(est: Estimator, a: NamedArray) -> tuple[Estimate, dict[str, float] | None]:
    try:
        extra = est.breakdown(a)
        return (Estimate(math.fsum(extra.values())) if extra is not None else est.estimate(a)), extra
    except NotApplicableError:
        return Estimate(math.nan), None


def _try(fn: Any) -> Estimate:
    try:
        return fn()
    except NotApplicableError:
        return Estimate(math.nan)
