"""The estimator contract, checked: every registered estimator must pass these (scikit-learn's
``check_estimator`` is the model).

``check_estimator(name)`` runs every check; ``CHECKS`` lists them so a test
suite can parametrise over ``(estimator, check)`` and a plug-in author can
run them on their own estimator after ``register``. A failed check raises
:class:`ConformanceError` saying what the estimator got wrong.
"""
from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import EmptyTensorError, KComplexityError, NotApplicableError
from ..sources import NamedArray, make_named
from .base import Context, Estimate, Estimator, get, rebuild

KINDS = ("code length", "lossy code length", "proxy", "reference")
CODES = ("code length", "lossy code length")


class ConformanceError(AssertionError):
    """An estimator breaks the contract."""


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConformanceError(f"estimator '{name}': {what}")


def sample(seed: int = 0) -> list[NamedArray]:
    """The tensors the checks score together: a float32 matrix with repeated rows and a float32 bias."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((48, 32)).astype(np.float32)
    w[24:] = w[:24]
    return [make_named("w", w), make_named("b", rng.standard_normal(30).astype(np.float32))]


def singles() -> list[NamedArray]:
    """The tensors the checks code one at a time: :func:`sample` plus float16 and bfloat16 ones."""
    import torch

    rng = np.random.default_rng(2)
    half = rng.standard_normal(200).astype(np.float16)
    brain = make_named("bf", torch.from_numpy(rng.standard_normal((16, 8)).astype(np.float32)).to(torch.bfloat16))
    return [*sample(), make_named("h", half), brain]


def context_for(est: Estimator, arrays: list[NamedArray]) -> Context:
    """The context ``est`` declares in ``needs``, built for ``arrays`` (a tiny torch model for ``model``)."""
    ctx = Context()
    if "previous" in est.needs:
        rng = np.random.default_rng(1)
        ctx.previous = [NamedArray(a.name, (a.values() + 0.01 * rng.standard_normal(a.shape)).astype(a.data.dtype)
                                   if a.dtype != "bfloat16" else a.data, a.dtype) for a in arrays]
    if "model" in est.needs or "loss_fn" in est.needs:
        import torch

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))

        def loss_fn(m: Any) -> float:
            with torch.no_grad():
                return float(torch.nn.functional.cross_entropy(m(x), y))

        ctx.model, ctx.loss_fn = model, loss_fn
    return ctx


def _whole_estimate(est: Estimator, arrays: list[NamedArray]) -> Estimate:
    """``est`` on all tensors together, with the context it needs (a model's own weights when it needs one)."""
    if not est.needs:
        return est.estimate_whole(arrays)
    ctx = context_for(est, arrays)
    if ctx.model is not None:
        from ..sources import open_source

        arrays = list(open_source(ctx.model))
    return est.estimate_whole(arrays, ctx)


def _whole(est: Estimator, arrays: list[NamedArray]) -> float:
    return _whole_estimate(est, arrays).bits


def check_settings_round_trip(name: str) -> None:
    """``get(name, **est.settings())`` and the settings a report or run logs (through JSON) rebuild it."""
    est = get(name)
    _require(set(est.settings()) <= set(est.SETTINGS) or not est.SETTINGS and not est.settings(), name,
             f"settings() names keys it does not declare: {sorted(set(est.settings()) - set(est.SETTINGS))}")
    try:
        again = get(name, **est.settings())
        logged = rebuild(json.loads(json.dumps({"name": est.name, **est.settings(), "facts": est.facts()})))
    except KComplexityError as exc:
        raise ConformanceError(f"estimator '{name}': its settings do not rebuild it: {exc}") from None
    _require(again == est and logged == est, name, "the rebuilt estimator differs from the original")
    _require(get(est) is est, name, "get() of an estimator object must return it unchanged")


def check_deterministic(name: str) -> None:
    """The same input gives the same bits, from the same and from a fresh instance."""
    arrays = sample()
    first = _whole(get(name), arrays)
    _require(first == _whole(get(name), arrays) and first == _whole(get(name), sample()), name,
             "two runs on the same tensors give different bits")


def check_kind(name: str) -> None:
    """An honest kind: codes write a code of exactly their bits and lossy ones state their distortion;
    proxies and references write none."""
    est = get(name)
    _require(est.kind in KINDS, name, f"kind {est.kind!r} is not one of {KINDS}")
    if est.needs:  # measured as a whole with context: its details carry the distortion it buys
        details = _whole_estimate(est, sample()).details
        _require(est.kind != "lossy code length" or {"mse", "max_abs_err"} <= set(details), name,
                 "a lossy code must report mse and max_abs_err")
        return
    for a in singles():
        if est.kind in CODES:
            try:
                code = est.encode(a)
            except NotApplicableError:
                continue
            except NotImplementedError:
                raise ConformanceError(f"estimator '{name}' says it is a {est.kind} but writes no code") from None
            _require(8 * len(code) == est.bits(a), name, f"8 x len(encode) = {8 * len(code)} but bits = {est.bits(a)}")
            if est.kind == "lossy code length":
                _require({"mse", "max_abs_err"} <= set(est.estimate(a).details), name,
                         "a lossy code must report mse and max_abs_err")
        else:
            try:
                est.encode(a)
            except NotImplementedError:
                continue
            raise ConformanceError(f"estimator '{name}' is a {est.kind} yet writes a code: call it a code length")


def check_round_trip(name: str) -> None:
    """decode(encode(x)) is x bit for bit for lossless codes, within the reported max error for lossy ones."""
    est = get(name)
    if est.kind not in CODES or est.needs:
        return
    for a in singles():
        try:
            code = est.encode(a)
        except NotApplicableError:
            continue
        back = est.decode(code, a)
        _require(back.shape == a.shape and back.dtype == a.dtype, name, "decode changes the shape or dtype")
        if est.kind == "code length":
            _require(back.data.tobytes() == a.data.tobytes(), name, f"decode(encode({a.name})) is not exact")
        else:
            err = float(np.abs(back.values().astype(np.float64) - a.values().astype(np.float64)).max())
            _require(err <= est.estimate(a).details["max_abs_err"] * (1 + 1e-12), name,
                     f"decoded values are off by {err}, more than the reported max_abs_err")


def check_pickle(name: str) -> None:
    """An estimator pickles (worker processes receive it) into an equal one giving the same bits."""
    est = get(name)
    again = pickle.loads(pickle.dumps(est))
    _require(again == est, name, "a pickled copy is not equal to the original")
    arrays = sample()
    _require(_whole(again, arrays) == _whole(est, arrays), name, "a pickled copy gives different bits")


def check_edge_inputs(name: str) -> None:
    """Empty input is EmptyTensorError; NaN, integer and bool input give finite bits or a KComplexityError
    (NotApplicableError where the code does not take the dtype), never another exception; lossless codes
    keep NaN bit for bit."""
    est = get(name)
    try:
        est.bits(np.zeros(0, np.float32))
        raise ConformanceError(f"estimator '{name}': an empty tensor must raise EmptyTensorError")
    except EmptyTensorError:
        pass
    except KComplexityError as exc:
        raise ConformanceError(f"estimator '{name}': an empty tensor raised {type(exc).__name__}") from None
    nan = np.linspace(-1, 1, 64, dtype=np.float32)
    nan[::7] = np.nan
    for x in (nan, np.arange(-20, 44, dtype=np.int32), np.arange(64) % 3 == 0):
        try:
            bits = est.bits(x)
        except KComplexityError:
            continue
        _require(math.isfinite(bits) and bits >= 0, name, f"bits of a {x.dtype} tensor are {bits}")
        if est.kind == "code length" and not est.needs:
            a = make_named("x", x, allow_nonfinite=True)
            try:
                back = est.decode(est.encode(a), a)
            except NotApplicableError:
                continue
            _require(back.data.tobytes() == a.data.tobytes(), name, f"a {x.dtype} tensor does not round-trip")


def check_jobs(name: str) -> None:
    """``score(..., jobs=2)`` gives the same report as ``jobs=1``."""
    import os

    from ..scoring import score

    if (os.cpu_count() or 1) < 2:
        return
    est = get(name)
    arrays: Any = {a.name: a.data for a in sample()}
    kwargs: dict[str, Any] = {}
    if est.needs:
        ctx = context_for(est, sample())
        kwargs = {"model": ctx.model, "loss_fn": ctx.loss_fn, "previous": ctx.previous and
                  {a.name: a.data for a in ctx.previous}}
        if ctx.model is not None:
            arrays = ctx.model
    one = score(arrays, name, jobs=1, **kwargs).to_dict()
    two = score(arrays, name, jobs=2, **kwargs).to_dict()
    _require(one == two, name, "jobs=2 gives a different report from jobs=1")


CHECKS: list[Callable[[str], None]] = [check_settings_round_trip, check_deterministic, check_kind,
                                       check_round_trip, check_pickle, check_edge_inputs, check_jobs]


def check_estimator(name: str) -> None:
    """Run every check on registered estimator ``name`` (ConformanceError on the first failure)."""
    for check in CHECKS:
        check(name)


__all__ = ["check_estimator", "CHECKS", "ConformanceError", "sample"]
