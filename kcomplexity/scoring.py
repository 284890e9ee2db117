"""``score()``: run estimators over every tensor of a source and collect a :class:`Report`."""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from .errors import EstimatorSettingError, NotApplicableError
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
    jobs: int = 1,
) -> Report:
    """Estimate the description length of every tensor in ``source``, in bits.

    ``source`` is anything :func:`kcomplexity.sources.open_source` reads.
    Per-tensor figures are always computed; ``total`` is their sum, or with
    ``whole=True`` the estimate for all tensors concatenated in order (the
    MoMos paper's measurement). Files are read one tensor at a time unless
    ``whole=True`` needs them all. ``jobs`` > 1 codes that many tensors at
    once on threads (the compressors and coders release the GIL), holding at
    most ``2 * jobs`` tensors; the report is identical to ``jobs=1``.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise EstimatorSettingError(f"jobs must be a positive integer, got {jobs!r}")
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
    for a, results in _scored(bar, ests, jobs):
        bar.set_postfix_str(a.name[-40:], refresh=False)
        names.append(a.name)
        numel[a.name], dtypes[a.name], raw_bits[a.name] = a.numel, a.dtype, a.raw_bits
        for label, (estimate, extra) in results.items():
            estimates[label][a.name] = estimate
            bits[label][a.name] = estimate.bits
            if extra is not None:
                breakdown.setdefault(label, {})[a.name] = extra
        if whole:
            kept.append(a)
        del a, results  # keep few tensors alive while the next ones are read
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
        left_out=list(src.left_out),
    )


def _score_all(ests: Mapping[str, Estimator], a: NamedArray) -> dict[str, tuple[Estimate, dict[str, float] | None]]:
    return {label: _score_one(est, a) for label, est in ests.items()}


def _scored(arrays: Iterable[NamedArray], ests: Mapping[str, Estimator], jobs: int
            ) -> Iterator[tuple[NamedArray, dict[str, tuple[Estimate, dict[str, float] | None]]]]:
    """(tensor, its estimates) in source order; with jobs > 1, up to 2 * jobs tensors in flight on threads."""
    if jobs == 1:
        for a in arrays:
            yield a, _score_all(ests, a)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs, thread_name_prefix="kcomplexity-score") as pool:
        pending: deque = deque()
        for a in arrays:
            pending.append((a, pool.submit(_score_all, ests, a)))
            del a
            if len(pending) >= 2 * jobs:
                a, future = pending.popleft()
                yield a, future.result()
        while pending:
            a, future = pending.popleft()
            yield a, future.result()


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
