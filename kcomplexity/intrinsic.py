"""Intrinsic complexity at a loss budget (DeMoss et al. 2024, "The Complexity Dynamics of Grokking").

The coarsest uniform precision at which the model still does its job: one
global ``rel`` (step = rel x RMS, per tensor) applied to every trainable
parameter such that the loss stays within ``loss_before + eps`` (or
``loss_before * (1 + eps)``), and the length of the quantised code
(:mod:`kcomplexity.codecs.quant`) at that precision. The model is restored
bit for bit afterwards, also when the loss raises.

The loss of a real network is not monotone in ``rel``: on a trained digits
MLP the pass/fail outcome flips 7 times over 400 values, so a bisection of
[REL_MIN, REL_MAX] may settle in a fine passing window below a coarse one.
The default search (``search="grid"``) therefore scans a log grid from the
coarsest step down (factor GRID_FACTOR), stops at the first step that
passes and bisects between it and the coarser grid step that failed; with
the other half of the budget it also runs the former bisection (which
found a passing window between two failing grid steps on that MLP), and
keeps the coarser of the two passing steps. So the answer is never finer
than the coarsest passing grid step it scanned, nor than the bisection's.
Losses are cached by step, and the evaluations stay within ``max_evals``.
``search="bisect"`` is the bisection alone.

What the search guarantees, and no more: the step it returns passes the
budget, and is the coarsest passing step among those it evaluated; the
bisection stops once its bracket is within REL_TOLERANCE (5 %). It does not
guarantee the coarsest passing step of all: with a loss that is not monotone
in the step, a narrow failing notch can stop the bisection below a coarser
passing window (an audit found one run at 0.916x the coarsest passing step
of a fine scan). "Coarsest" in this package's reports means this.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import IntrinsicError, NonFiniteLossError
from .codecs.bits import read_varint, varint
from .codecs.quant import (ROW_LEVELS, QuantizedCode, code_quantized, code_rows, decode_quantized, float_step,
                           reconstruct, reconstruct_rows)
from .sources import as_named

#: the search interval for rel: at REL_MAX (step = 16 RMS) nearly every weight rounds to zero;
#: REL_MIN is finer than any budget we have seen need
REL_MIN, REL_MAX = 1e-4, 16.0
#: stop bisecting once the interval is this narrow (ratio hi/lo)
REL_TOLERANCE = 1.05
#: the coarse-to-fine scan's step between grid points (16, 4, 1, 0.25, ...)
GRID_FACTOR = 4.0
SEARCHES = ("grid", "bisect")
#: "global": one rel for every tensor; "tensor": then each tensor, largest first, coarsened by doubling its rel
#: while the loss stays within the budget (at most TENSOR_DOUBLINGS tries each, counted in evals); "row": then
#: each matrix's rows (output units), in ROW_GROUPS groups by norm, smallest first, coarsened the same way up to
#: ROW_LEVELS - 1 doublings (the code then carries each row's level: :func:`~kcomplexity.codecs.quant.code_rows`)
ALLOCATIONS = ("global", "tensor", "row")
TENSOR_DOUBLINGS = 3
ROW_GROUPS = 4
#: low_rank=True: each matrix's rank kept, as a fraction of its full rank (1: the matrix itself, unfactored)
RANK_FRACTIONS = (1.0, 0.5, 0.25, 0.125)


@dataclass(frozen=True)
class Intrinsic:
    """Result of :func:`intrinsic`: the code length at the coarsest precision the search found within the budget
    (the coarsest passing step it evaluated; see the module's docstring for what that guarantees)."""

    bits: int                #: the quantised code of every trainable tensor at ``rel`` plus the buffers' lossless code
    rel: float               #: the coarsest global step / RMS found within the budget
    loss_before: float
    loss_after: float        #: loss of the model quantised at ``rel``
    budget: float            #: the largest loss allowed
    evals: int               #: loss evaluations spent (including ``loss_before``)
    within_budget: bool      #: False when even REL_MIN broke the budget (then bits are at REL_MIN)
    mse: float               #: distortion of the quantised weights (mean over all parameters)
    max_abs_err: float
    numel: int
    #: of ``bits``: floating-point buffers (batch-norm statistics), coded losslessly (fpc, or zstd for float64):
    #: the model needs them, and quantising them is not what the loss budget was measured for
    buffer_bits: int = 0
    #: each tensor's rel under ``allocation="tensor"`` or ``"row"`` (empty for the global allocation)
    tensor_rels: dict[str, float] = field(default_factory=dict)
    #: under ``allocation="row"``: of each matrix whose rows were coarsened, how many rows sit at each level
    #: (step x 1, 2, 4, 8)
    row_levels: dict[str, list[int]] = field(default_factory=dict)
    #: under ``low_rank=True``: the rank kept in each factored matrix (empty when keeping them whole won)
    ranks: dict[str, int] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        return {"rel": self.rel, "loss_before": self.loss_before, "loss_after": self.loss_after,
                "budget": self.budget, "evals": self.evals, "within_budget": self.within_budget,
                "mse": self.mse, "max_abs_err": self.max_abs_err, "buffer_bits": self.buffer_bits,
                **({"tensor_rels": dict(self.tensor_rels)} if self.tensor_rels else {}),
                **({"row_levels": dict(self.row_levels)} if self.row_levels else {}),
                **({"ranks": dict(self.ranks)} if self.ranks else {})}


def grid() -> list[float]:
    """The scan's steps, coarsest first: REL_MAX / GRID_FACTOR^k down to REL_MIN."""
    out, r = [], REL_MAX
    while r >= REL_MIN:
        out.append(r)
        r /= GRID_FACTOR
    return out


def check_budget(eps: Any, relative: Any = False, max_evals: Any = 24) -> tuple[float, bool, int]:
    """Validate (eps, relative, max_evals): eps finite and > 0, max_evals an integer >= 3."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(eps)) or float(eps) <= 0:
        raise IntrinsicError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(relative, (bool, np.bool_)):
        raise IntrinsicError(f"relative must be True or False, got {relative!r}")
    if isinstance(max_evals, bool) or not isinstance(max_evals, (int, np.integer)) or max_evals < 3:
        raise IntrinsicError(f"max_evals must be an integer >= 3 (before, coarsest, one bisection), got {max_evals!r}")
    return float(eps), bool(relative), int(max_evals)


def intrinsic(model: Any, loss_fn: Callable[[Any], float], eps: float = 0.1, relative: bool = False,
              max_evals: int = 24, search: str = "grid", allocation: str = "global",
              low_rank: bool = False) -> Intrinsic:
    """The quantised code of ``model``'s trainable parameters at the coarsest precision within the loss budget, in bits.

    ``loss_fn(model) -> float`` evaluates data the caller fixed. The search
    costs at most ``max_evals`` loss evaluations plus one code at the end
    (``allocation="tensor"`` adds at most TENSOR_DOUBLINGS per tensor,
    ``"row"`` also at most ROW_GROUPS x (ROW_LEVELS - 1) per matrix); the
    model (parameters, buffers, train/eval mode) is left exactly as it was.

    ``low_rank=True`` (DeMoss et al.; global allocation only) also tries each
    matrix as a truncated SVD ``A @ B`` at each of RANK_FRACTIONS of its
    rank, both factors quantised at the searched ``rel``
    (:func:`code_low_rank`): one search per fraction, so at most
    len(RANK_FRACTIONS) x ``max_evals`` evaluations, and the shortest code
    within budget wins (rank and step chosen under the same budget).
    """
    import torch

    eps, relative, max_evals = check_budget(eps, relative, max_evals)
    if search not in SEARCHES:
        raise IntrinsicError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if allocation not in ALLOCATIONS:
        raise IntrinsicError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if not isinstance(low_rank, (bool, np.bool_)):
        raise IntrinsicError(f"low_rank must be True or False, got {low_rank!r}")
    if low_rank and allocation != "global":
        raise IntrinsicError("low_rank=True searches rank and one global step together; use allocation='global'")
    if not isinstance(model, torch.nn.Module):
        raise IntrinsicError(f"intrinsic() needs an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise IntrinsicError("loss_fn must be callable as loss_fn(model) -> float")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise IntrinsicError("the model has no trainable parameters")
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    training = model.training
    evals = 0
    cache: dict[float, float] = {}
    factors: dict[str, tuple[Any, Any]] = {}  # the matrices coded as truncated SVDs in the current search

    def loss_at(rel: float | None) -> float:
        if rel is not None and rel in cache:  # the two searches share steps (REL_MAX, REL_MIN)
            return cache[rel]
        cache[rel] = value = _loss_at(rel)
        return value

    def _loss_at(rel: float | dict[str, float] | None, levels: dict[str, np.ndarray] | None = None) -> float:
        nonlocal evals
        with torch.no_grad():
            for name, p in params:
                src = saved_params[name]
                r = rel.get(name) if isinstance(rel, dict) else rel
                if r is not None and name in factors:
                    p.copy_(_low_rank_like(factors[name], r, src))
                else:
                    p.copy_(src if r is None else _quantized_like(src, r, (levels or {}).get(name)))
        evals += 1
        try:
            value = loss_fn(model)
            return float(value.detach() if hasattr(value, "detach") else value)
        except IntrinsicError:
            raise
        except Exception as exc:  # the caller's closure: any failure becomes one clear error
            raise IntrinsicError(f"loss_fn raised {type(exc).__name__}: {exc}") from exc

    saved_params = {n: p.detach().clone() for n, p in params}
    try:
        before = loss_at(None)
        if not math.isfinite(before):
            raise NonFiniteLossError(f"the model's loss is already {before}; intrinsic complexity needs a finite loss")
        # relative to the loss's size: a negative loss (a log-likelihood, say) gets its budget above it too
        budget = before + eps * abs(before) if relative else before + eps
        ok = lambda loss: math.isfinite(loss) and loss <= budget  # noqa: E731 - NaN/inf never fit a budget
        tried = []
        for fraction in RANK_FRACTIONS if low_rank else (1.0,):
            factors.clear()
            for n, p in params if fraction < 1 else ():
                if p.ndim >= 2 and (f := _factor(saved_params[n], fraction)) is not None:
                    factors[n] = f
            if fraction < 1 and not factors:
                continue  # no matrix is smaller factored at this rank: the full-rank search already ran
            cache.clear()
            found = _search_rel(loss_at, ok, lambda: evals, max_evals, search)
            tried.append(_allocate(params, saved_params, dict(factors), found, ok, allocation, _loss_at))
        within = any(t["within"] for t in tried)
        best = min((t for t in tried if t["within"] == within), key=lambda t: t["bits"])
        lo, lo_loss, rels, levels, codes = best["rel"], best["loss"], best["rels"], best["levels"], best["codes"]
        ranks = {n: int(f[0].shape[1]) for n, f in best["factors"].items()}
        buffer_bits = sum(_lossless_bits(b.detach()) for b in model.buffers() if b.is_floating_point() and b.numel())
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        model.train(training)
    n = sum(c.numel for c in codes)
    return Intrinsic(bits=sum(c.bits for c in codes) + buffer_bits, rel=lo, loss_before=before, loss_after=lo_loss, budget=budget,
                     evals=evals, within_budget=within, mse=math.fsum(c.sse for c in codes) / n,
                     max_abs_err=max(c.max_abs_err for c in codes), numel=n, buffer_bits=buffer_bits,
                     tensor_rels=rels if allocation != "global" else {},
                     row_levels={n: np.bincount(v, minlength=ROW_LEVELS).tolist() for n, v in levels.items()},
                     ranks=ranks)


def _search_rel(loss_at: Callable[[float], float], ok: Callable[[float], bool], spent: Callable[[], int],
                max_evals: int, search: str) -> tuple[float, float]:
    """(rel, loss) of the coarsest passing global step the search finds (see the module's docstring)."""
    if search == "bisect":
        return _bisect(loss_at, ok, spent, spent() + max_evals - 1)
    start = spent()
    found = [_scan_then_bisect(loss_at, ok, spent, start + max(3, max_evals // 2) - 1),
             _bisect(loss_at, ok, spent, start + max_evals - 1)]
    passing = [f for f in found if ok(f[1])]
    return max(passing) if passing else min(found)


def _allocate(params: list[tuple[str, Any]], saved: dict[str, Any], factors: dict[str, tuple[Any, Any]],
              found: tuple[float, float], ok: Callable[[float], bool], allocation: str,
              loss_with: Callable[..., float]) -> dict[str, Any]:
    """From the global step found, the finer allocation asked for, and the codes it buys."""
    lo, lo_loss = found
    within = ok(lo_loss)
    rels = {n: lo for n, _ in params}
    levels: dict[str, np.ndarray] = {}
    if allocation != "global" and within:
        # coarser steps where the loss does not care: the largest tensors first, since they hold the bits
        for name, p in sorted(params, key=lambda item: -item[1].numel()):
            for _ in range(TENSOR_DOUBLINGS):
                trial = {**rels, name: min(rels[name] * 2, REL_MAX)}
                if trial[name] == rels[name]:
                    break
                loss = loss_with(trial)
                if not ok(loss):
                    break
                rels, lo_loss = trial, loss
    coded: dict[str, QuantizedCode] = {}  # the row pass's codes of the matrices it examined, kept as they are
    if allocation == "row" and within:
        levels, lo_loss, coded = _coarsen_rows(params, saved, rels, lambda lv: loss_with(rels, lv), ok, lo_loss)
    codes = [code_low_rank(saved[n], factors[n], rels[n]) if n in factors
             else coded[n] if n in coded else code_quantized(saved[n], rel=rels[n]) for n, _ in params]
    return {"rel": lo, "loss": lo_loss, "within": within, "rels": rels, "levels": levels, "codes": codes,
            "factors": factors, "bits": sum(c.bits for c in codes)}


def _factor(t: Any, fraction: float) -> tuple[Any, Any] | None:
    """The rank-k truncated SVD of a matrix (first axis against the rest) as factors A (out x k) and B (k x in),
    the singular values split evenly between them; None when k factors would hold as many values as the matrix."""
    import torch

    w = t.detach().double().reshape(t.shape[0], -1)
    rows, cols = w.shape
    k = max(1, int(round(fraction * min(rows, cols))))
    if k * (rows + cols) >= rows * cols:
        return None
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    root = sv[:k].sqrt()
    return (u[:, :k] * root).float().contiguous(), (root[:, None] * vh[:k]).float().contiguous()


def _product(a: np.ndarray, b: np.ndarray, like: Any) -> Any:
    """The decoded factors' product, as the decoder forms it (float64, then the tensor's dtype and shape)."""
    import torch

    out = torch.from_numpy(a.astype(np.float64) @ b.astype(np.float64))
    return out.to(dtype=like.dtype, device=like.device).reshape(like.shape)


def _low_rank_like(ab: tuple[Any, Any], rel: float, like: Any) -> Any:
    return _product(reconstruct(ab[0], rel=rel), reconstruct(ab[1], rel=rel), like)


def code_low_rank(t: Any, ab: tuple[Any, Any], rel: float) -> QuantizedCode:
    """A matrix coded as its two factors, each quantised at ``rel`` (step = rel x the factor's RMS): the
    length (varint) and quant code of A, then the quant code of B; the distortion is the product's against
    ``t``. :func:`decode_low_rank` inverts it."""
    a, b = code_quantized(ab[0], rel=rel), code_quantized(ab[1], rel=rel)
    back = _product(decode_quantized(a.data), decode_quantized(b.data), t).double().reshape(-1)
    orig = t.detach().double().reshape(-1)
    err = back - orig
    return QuantizedCode(data=varint(len(a.data)) + a.data + b.data, step=float(a.step), method="low-rank",
                         numel=int(orig.numel()), sse=float(err @ err), max_abs_err=float(err.abs().max()),
                         signal=float(orig @ orig))


def decode_low_rank(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`code_low_rank`: the product of the decoded factors, float32, in ``shape``."""
    from .errors import CorruptFileError

    try:
        size, pos = read_varint(data, 0)
    except IndexError:
        raise CorruptFileError("corrupt low-rank code: truncated") from None
    a, b = decode_quantized(data[pos:pos + size]), decode_quantized(data[pos + size:])
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or a.shape[0] * b.shape[1] != math.prod(shape):
        raise CorruptFileError("corrupt low-rank code: its factors do not fit the shape")
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32).reshape(shape)


def _coarsen_rows(params: list[tuple[str, Any]], saved: dict[str, Any], rels: dict[str, float],
                  loss_with: Callable[[dict[str, np.ndarray]], float], ok: Callable[[float], bool], loss: float
                  ) -> tuple[dict[str, np.ndarray], float, dict[str, QuantizedCode]]:
    """Row levels of each matrix, largest first: its rows in ROW_GROUPS groups by norm (smallest first, where
    a coarser step moves the outputs least), each group's level raised while the loss stays within budget.
    A level is only tried when its code (levels included) is shorter than the matrix's best so far, so no
    evaluation is spent on a coarsening that would not pay, and every kept level was measured. Returns the
    levels, the loss and each examined matrix's shortest code (quant, or rows when levels were kept)."""
    levels: dict[str, np.ndarray] = {}
    coded: dict[str, QuantizedCode] = {}
    for name, p in sorted(params, key=lambda item: -item[1].numel()):
        if p.ndim < 2 or p.shape[0] < ROW_GROUPS:
            continue
        src = saved[name]
        step = _step(src, rels[name])
        norms = src.detach().reshape(p.shape[0], -1).double().norm(dim=1).cpu().numpy()
        group = np.searchsorted(np.quantile(norms, np.linspace(0, 1, ROW_GROUPS + 1)[1:-1]), norms, side="right")
        current = np.zeros(p.shape[0], dtype=np.int64)
        best = coded[name] = code_quantized(src, rel=rels[name])
        for g in range(ROW_GROUPS):
            for up in range(1, ROW_LEVELS):
                trial = np.where(group == g, up, current)
                code = code_rows(src, step, trial)
                if code.bits >= best.bits:
                    continue  # the levels' side information outweighs the saving: try a coarser level
                value = loss_with({**levels, name: trial})
                if not ok(value):
                    break
                current, loss, best = trial, value, code
        if current.any():
            levels[name], coded[name] = current, best
    return levels, loss, coded


def _step(t: Any, rel: float) -> float:
    """quant's step for a tensor at ``rel`` (:func:`~kcomplexity.codecs.quant.float_step`)."""
    return float_step("tensor", as_named(t).values().reshape(-1).astype(np.float64), rel, None)


def _bisect(loss_at: Callable[[float], float], ok: Callable[[float], bool], spent: Callable[[], int],
            max_evals: int) -> tuple[float, float]:
    """Bisection of [REL_MIN, REL_MAX] in log(rel), assuming the loss rises with rel: (rel, its loss)."""
    hi_loss = loss_at(REL_MAX)
    if ok(hi_loss):
        return REL_MAX, hi_loss
    lo, lo_loss = _narrow(loss_at, ok, spent, max_evals, REL_MIN, None, REL_MAX)
    return (lo, lo_loss) if lo_loss is not None else (REL_MIN, loss_at(REL_MIN))


def _scan_then_bisect(loss_at: Callable[[float], float], ok: Callable[[float], bool], spent: Callable[[], int],
                      max_evals: int) -> tuple[float, float]:
    """The first passing step of the coarse-to-fine grid, refined by bisection towards the coarser grid step
    that failed: (rel, its loss). The answer is never finer than the coarsest passing grid step it scanned."""
    failed = None
    for r in grid():
        if spent() >= max_evals - 1:  # one evaluation kept for REL_MIN
            break
        loss = loss_at(r)
        if ok(loss):
            return (r, loss) if failed is None else _narrow(loss_at, ok, spent, max_evals, r, loss, failed)
        failed = r
    return REL_MIN, loss_at(REL_MIN)


def _narrow(loss_at: Callable[[float], float], ok: Callable[[float], bool], spent: Callable[[], int],
            max_evals: int, lo: float, lo_loss: float | None, hi: float) -> tuple[float, float | None]:
    """Bisect (lo, hi) in log(rel) until hi / lo <= REL_TOLERANCE or the budget is spent, keeping lo the
    coarsest passing step seen: (lo, its loss). ``lo_loss`` None means lo is not known to pass yet; one
    evaluation is then kept in reserve for the caller to check it."""
    while hi / lo > REL_TOLERANCE and spent() < max_evals - (lo_loss is None):
        mid = math.sqrt(lo * hi)
        loss = loss_at(mid)
        if ok(loss):
            lo, lo_loss = mid, loss
        else:
            hi = mid
    return lo, lo_loss


def _lossless_bits(t: Any) -> int:
    """Bits of a buffer's lossless code: fpc for float32/16/bfloat16, zstd of the bytes otherwise."""
    from .codecs import FpcCodec, ZstdCodec

    codec = FpcCodec() if FpcCodec().takes(str(t.dtype).removeprefix("torch.")) else ZstdCodec()
    return codec.bits(t.cpu())


def _quantized_like(t: Any, rel: float, levels: np.ndarray | None = None) -> Any:
    """``t`` replaced by its decoded quantisation at ``rel`` (exactly what decode_quantized, or decode_rows with
    row ``levels``, returns), same dtype."""
    import torch

    back = reconstruct(t, rel=rel) if levels is None else reconstruct_rows(t, _step(t, rel), levels)
    return torch.from_numpy(back).to(dtype=t.dtype, device=t.device).reshape(t.shape)


__all__ = ["intrinsic", "Intrinsic", "check_budget", "grid", "REL_MIN", "REL_MAX", "SEARCHES", "ALLOCATIONS"]
