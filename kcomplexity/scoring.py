"""``score()``: run estimators over every tensor of a source and collect a :class:`Report`."""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from . import workers
from .errors import EstimatorSettingError, NotApplicableError
from .estimators.base import SCORE, Context, Estimate, Estimator, resolve
from .report import Report
from .sources import NamedArray, Source, is_module, open_source, read_safetensors_tensor

DEFAULT_ESTIMATORS = SCORE


#: the most tensors coded at once: one per core
MAX_JOBS = os.cpu_count() or 1


def score(
    source: Any,
    estimators: str | Estimator | Sequence[str | Estimator] | Mapping[str, Estimator] = DEFAULT_ESTIMATORS,
    whole: bool = False,
    include_buffers: bool = False,
    allow_nonfinite: bool = False,
    progress: bool = False,
    jobs: int = 1,
    model: Any = None,
    loss_fn: Callable[[Any], float] | None = None,
    previous: Any = None,
) -> Report:
    """Estimate the description length of every tensor in ``source``, in bits.

    ``source`` is anything :func:`kcomplexity.sources.open_source` reads.
    Per-tensor figures are always computed; ``total`` is their sum, or with
    ``whole=True`` the estimate for all tensors concatenated in order (the
    MoMos paper's measurement). Files are read one tensor at a time unless
    ``whole=True`` needs them all. ``jobs`` > 1 codes that many tensors at
    once, holding at most ``2 * jobs``: on threads when every estimator
    releases the GIL (the compressors), else in worker processes. The
    report is identical to ``jobs=1``.

    ``model``, ``loss_fn`` and ``previous`` are the context some estimators
    need (``intrinsic``: the ``nn.Module`` and ``loss_fn(model) -> float``;
    ``delta``: the previous weights, any source with the same names). A
    module given as ``source`` is also the context's model. Such estimators
    are measured on all tensors together: their total covers every tensor
    and their per-tensor cells are missing; without their context their
    total is missing too.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        # each job holds tensors in flight (and a process for some codes): more than cores only costs memory
        raise EstimatorSettingError(f"jobs must be a whole number in 1..{MAX_JOBS} (this machine's cores), "
                                    f"got {jobs!r}")
    ests = resolve(estimators)
    context = _context(source, model, loss_fn, previous, allow_nonfinite)
    whole_only = [label for label, est in ests.items() if est.needs]
    src = open_source(source, include_buffers=include_buffers, allow_nonfinite=allow_nonfinite)
    names: list[str] = []
    numel: dict[str, int] = {}
    dtypes: dict[str, str] = {}
    raw_bits: dict[str, int] = {}
    bits: dict[str, dict[str, float]] = {e: {} for e in ests}
    estimates: dict[str, dict[str, Estimate]] = {e: {} for e in ests}
    breakdown: dict[str, dict[str, dict[str, float]]] = {}
    kept: list[NamedArray] = []
    read_in_workers = (jobs > 1 and not whole and src.files is not None
                       and not all(est.thread_parallel for est in ests.values()))
    scored = (_scored_in_workers(src, ests, jobs) if read_in_workers else _scored(src, ests, jobs))
    for a, results in tqdm(scored, total=len(src), desc="scoring", unit="tensor",
                           disable=not progress or len(src) < 2, leave=False):
        names.append(a.name)
        numel[a.name], dtypes[a.name], raw_bits[a.name] = a.numel, a.dtype, a.raw_bits
        for label, (estimate, extra) in results.items():
            estimates[label][a.name] = estimate
            bits[label][a.name] = estimate.bits
            if extra is not None:
                breakdown.setdefault(label, {})[a.name] = extra
        if whole or whole_only:
            kept.append(a)
        del a, results  # keep few tensors alive while the next ones are read
    totals = {}
    for label, est in ests.items():
        if whole or label in whole_only:
            totals[label] = _try(lambda: est.estimate_whole(kept, context))
        else:
            parts = [(e, numel[name]) for name, e in estimates[label].items() if not math.isnan(e.bits)]
            totals[label] = est.combine([e for e, _ in parts], [k for _, k in parts]) if parts else Estimate(math.nan)
    details = {label: {name: dict(e.details) for name, e in col.items() if e.details}
               for label, col in estimates.items()}
    return Report(
        names=names, numel=numel, dtypes=dtypes, raw_bits=raw_bits, bits=bits,
        total={label: t.bits for label, t in totals.items()}, whole=whole,
        settings={label: {"name": est.name, **est.settings(), **({"facts": est.facts()} if est.facts() else {})}
                  for label, est in ests.items()},
        kinds={label: est.kind for label, est in ests.items()}, breakdown=breakdown,
        details={label: col for label, col in details.items() if col},
        total_details={label: dict(t.details) for label, t in totals.items() if t.details},
        left_out=list(src.left_out), whole_only=whole_only,
    )


def _context(source: Any, model: Any, loss_fn: Callable[[Any], float] | None, previous: Any,
             allow_nonfinite: bool) -> Context:
    """The context ``score`` passes to estimators that need one; the model defaults to a module source."""
    if model is None and is_module(source):
        model = source
    if loss_fn is not None and not callable(loss_fn):
        raise EstimatorSettingError(f"loss_fn must be callable as loss_fn(model) -> float, got {type(loss_fn).__name__}")
    prev = list(open_source(previous, allow_nonfinite=allow_nonfinite)) if previous is not None else None
    return Context(model=model, loss_fn=loss_fn, previous=prev)


def _score_all(ests: Mapping[str, Estimator], a: NamedArray) -> dict[str, tuple[Estimate, dict[str, float] | None]]:
    return {label: _score_one(est, a) for label, est in ests.items()}


def _scored(arrays: Iterable[NamedArray], ests: Mapping[str, Estimator], jobs: int
            ) -> Iterator[tuple[NamedArray, dict[str, tuple[Estimate, dict[str, float] | None]]]]:
    """(tensor, its estimates) in source order; with jobs > 1, up to 2 * jobs tensors in flight."""
    if jobs == 1:
        for a in arrays:
            yield a, _score_all(ests, a)
        return
    # threads for GIL-free work; otherwise processes (forkserver: no fork of a process running torch threads)
    with workers.pool(jobs, all(est.thread_parallel for est in ests.values())) as pool:
        yield from _in_order(pool, ((a, (_score_all, ests, a)) for a in arrays), 2 * jobs)


@dataclass(frozen=True)
class _Scored:
    """What the report needs of a tensor a worker read and scored: everything but its data."""

    name: str
    dtype: str
    numel: int
    raw_bits: int


def _read_and_score(path: str, name: str, allow_nonfinite: bool, ests: Mapping[str, Estimator]
                    ) -> tuple[_Scored, dict[str, tuple[Estimate, dict[str, float] | None]]]:
    """In a worker: read one tensor of a safetensors file and score it."""
    a = read_safetensors_tensor(path, name, allow_nonfinite)
    return _Scored(a.name, a.dtype, a.numel, a.raw_bits), _score_all(ests, a)


def _scored_in_workers(src: Source, ests: Mapping[str, Estimator], jobs: int) -> Iterator[tuple[_Scored, Any]]:
    """Worker processes read the tensors from their files themselves: the parent only collects results."""
    with workers.pool(jobs, False) as pool:
        calls = ((None, (_read_and_score, path, name, src.allow_nonfinite, ests))
                 for name, path in zip(src.names, src.files))
        for _, result in _in_order(pool, calls, 2 * jobs):
            yield result


def _in_order(pool: Any, calls: Iterable[tuple[Any, tuple[Any, ...]]], in_flight: int) -> Iterator[tuple[Any, Any]]:
    """(tag, fn(*args)) for each (tag, (fn, *args)) in ``calls``, in order, at most ``in_flight`` submitted at once."""
    pending: deque = deque()
    for tag, (fn, *args) in calls:
        pending.append((tag, pool.submit(fn, *args)))
        del tag, fn, args  # no tensor stays referenced here beyond those in flight
        if len(pending) >= in_flight:
            tag, future = pending.popleft()
            yield tag, future.result()
    while pending:
        tag, future = pending.popleft()
        yield tag, future.result()


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
