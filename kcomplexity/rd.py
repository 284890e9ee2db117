"""Rate–distortion curve of a model: bits of the quantised code against the distortion it buys.

For each relative step ``rel`` every tensor is coded by :mod:`kcomplexity.codecs.quant`
(step = rel x its RMS); a point is the total code length with the MSE over
all values, the largest absolute error and the signal-to-noise ratio. Other
families of lossy codes add their own points through the entry-point group
``kcomplexity.rd_points`` (``momos`` adds mosaics: bits = the mosaic's real
code, distortion = the projection's), so kcomplexity never imports them.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EstimatorSettingError, KComplexityError
from .fileio import write_atomic
from .estimators.precision import summarise
from .codecs.quant import check_precision, code_quantized, reconstruct
from .codecs.tcq import DEFAULT_LAM, code_tcq
from .sources import NamedArray, open_source

if TYPE_CHECKING:  # pandas loads on first use: importing it cost a training worker half a second
    import pandas as pd

DEFAULT_RELS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
ENTRY_POINT_GROUP = "kcomplexity.rd_points"
COLUMNS = ("code", "setting", "rel", "bits", "bits_per_param", "mse", "max_abs_err", "snr_db", "delta",
           "target_mse", "slb_bits_per_param")
#: the MSE search stops once a step's MSE is within MSE_TOLERANCE² below the target or the step interval is
#: this narrow (ratio), and spends at most MSE_STEPS evaluations
MSE_TOLERANCE, MSE_STEPS = 1.002, 40


@dataclass
class RDCurve:
    """Points of bits against distortion; ``code`` says which family produced each point."""

    numel: int
    points: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per point: code, setting, rel, bits, bits_per_param, mse, max_abs_err, snr_db."""
        import pandas as pd

        return pd.DataFrame(self.points, columns=list(COLUMNS))

    def plot(self, path: str | Path) -> Path:
        """PNG of bits per parameter against MSE (log x), one line per code family."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df = self.to_frame()
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for code, part in df.groupby("code", sort=False):
            part = part.sort_values("mse")
            ax.plot(part["mse"], part["bits_per_param"], marker="o", label=code)
            for _, row in part.iterrows():
                ax.annotate(str(row["setting"]), (row["mse"], row["bits_per_param"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 3))
        ax.set_xscale("log")
        ax.set_xlabel("distortion: mean squared error of the weights")
        ax.set_ylabel("bits per parameter (real code)")
        ax.set_title(f"rate–distortion, {self.numel:,} parameters")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (PNG, PDF or SVG by its extension; creating its folder), close it,
    return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    if "\0" in str(path):
        plt.close(fig)
        raise KComplexityError(f"cannot write plot {path!r}: the path holds a NUL byte")
    try:
        if path.is_dir():
            raise KComplexityError(f"cannot write plot {path}: it is a directory; give a file name such as plot.png")
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in fig.canvas.get_supported_filetypes():
            raise KComplexityError(f"cannot write plot {path}: use a file name ending in "
                                   f"{', '.join('.' + f for f in ('png', 'pdf', 'svg'))}")
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110)
        write_atomic(path, buf.getvalue())  # a failure leaves the old file or none, never half a picture
    except OSError as exc:
        raise KComplexityError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path


def rd(source: Any, rel: Sequence[float] | None = None, include_buffers: bool = False,
       extra: dict[str, dict[str, Any]] | None = None, mse: Sequence[float] | None = None,
       rdoq: float = 0.0, trellis: bool = False) -> RDCurve:
    """Rate–distortion points of ``source`` at each relative step in ``rel`` (bits; distortion in the weights' units).

    The source is read once, one tensor at a time. ``extra`` asks plug-ins for
    more points, e.g. ``{"momos": {"s": 2, "capacity": [0.01, 0.05]}}``.
    ``mse`` asks for points at target distortions instead: one global step
    for every tensor (equal steps give every value the same distortion, the
    MSE-optimal allocation at high rate), the largest whose MSE over all
    values is within the target, so codes compare at equal MSE in one call.
    Such points also carry the Shannon lower bound for independent values at
    that MSE (``slb_bits_per_param``: the values' empirical differential
    entropy less ½ log2(2πe·MSE), a reference no code of independent values
    reaches). ``rel`` defaults to DEFAULT_RELS unless ``mse`` is given.
    ``rdoq`` > 0 chooses symbols by rate-distortion optimisation with that
    weight of a bit against a squared step (0.1 is a good start; same
    decoder, errors may exceed step/2 and ``max_abs_err`` says by how much).
    ``trellis=True`` codes by trellis-coded quantisation with context-modelled
    ANS instead (:mod:`kcomplexity.codecs.tcq`, code ``tcq``: the shortest
    code at equal MSE, every value within 2 steps); ``rdoq``, if given, is
    then its search's weight of a bit (default 0.3).
    """
    if isinstance(rdoq, bool) or not isinstance(rdoq, (int, float)) or not 0 <= rdoq < math.inf:
        raise EstimatorSettingError(f"rdoq must be a finite number >= 0, got {rdoq!r}")
    rels = [check_precision(r, None)[0] for r in _as_list(rel if rel is not None else
                                                          (DEFAULT_RELS if mse is None else ()))]
    targets = [_target(m) for m in _as_list(mse if mse is not None else ())]
    if not rels and not extra and not targets:
        raise EstimatorSettingError("rd needs at least one rel or mse")
    coder, label = _coder(trellis, float(rdoq))
    codes: list[list[Any]] = [[] for _ in rels]
    arrays: list[NamedArray] = []
    for a in open_source(source, include_buffers=include_buffers):
        for i, r in enumerate(rels):
            codes[i].append(coder(a, rel=r))
        if extra or targets:
            arrays.append(a)
    numel = sum(c.numel for c in codes[0]) if rels else sum(a.numel for a in arrays)
    curve = RDCurve(numel)
    for r, cs in zip(rels, codes):
        est = summarise(cs)
        curve.points.append(_point(label, f"rel={r:g}", r, est.bits, numel, est.details))
    for target in targets:
        tried: dict[float, list[Any]] = {}

        def measure(delta: float) -> float:
            if trellis:  # the trellis's distortion comes with its search: keep the codes of every step tried
                tried[delta] = [coder(a, delta=delta) for a in arrays]
                return summarise(tried[delta]).details["mse"]
            return _mse_at(arrays, delta, rdoq)

        delta = step_for_mse(arrays, target, measure=measure)
        est = summarise(tried.get(delta) or [coder(a, delta=delta) for a in arrays])
        point = _point(label, f"mse<={target:g}", math.nan, est.bits, numel, est.details)
        point.update(delta=delta, target_mse=target, slb_bits_per_param=shannon_lower_bound(arrays, target))
        curve.points.append(point)
    for name, options in (extra or {}).items():
        for p in _plugin(name)(arrays, **options):
            curve.points.append(_point(p["code"], p["setting"], math.nan, p["bits"], numel, p))
    return curve


def _coder(trellis: bool, rdoq: float) -> tuple[Callable[..., Any], str]:
    """The code of one tensor at a step (``rel=`` or ``delta=``), and its label in the curve."""
    if trellis:
        lam = rdoq or DEFAULT_LAM
        return (lambda a, **step: code_tcq(a, lam=lam, **step)), f"tcq lam={lam:g}"
    return (lambda a, **step: code_quantized(a, rdoq=rdoq, **step)), "quant" + (f" rdoq={rdoq:g}" if rdoq else "")


def _target(mse: Any) -> float:
    """A target MSE: a finite number > 0 (EstimatorSettingError naming it, not the step it is turned into)."""
    if isinstance(mse, bool) or not isinstance(mse, (int, float, np.integer, np.floating)) \
            or not math.isfinite(mse) or mse <= 0:
        raise EstimatorSettingError(f"an MSE target must be a finite number > 0, got {mse!r}")
    return float(mse)


def _mse_at(arrays: Sequence[NamedArray], delta: float, rdoq: float = 0.0) -> float:
    """MSE over every value of the tensors reconstructed on one absolute step ``delta``."""
    sse, n = 0.0, 0
    for a in arrays:
        x = a.values().reshape(-1).astype(np.float64)
        n += x.size
        if a.dtype == "bool" or x.dtype.kind in "iu" or a.data.dtype.kind in "iub":
            continue  # integers are coded exactly
        err = reconstruct(a, delta=delta, rdoq=rdoq).reshape(-1).astype(np.float64) - x
        sse += float(np.dot(err, err))
    return sse / n


def step_for_mse(arrays: Sequence[NamedArray], target: float, rdoq: float = 0.0,
                 measure: Callable[[float], float] | None = None) -> float:
    """The largest global absolute step whose code keeps the MSE over all values within ``target``.

    ``measure(step)`` gives the MSE at a step (default: uniform quantisation,
    with ``rdoq``). The search starts at sqrt(12 x target), where a uniform
    quantiser's error is step^2 / 12, and steps in log–log space along the
    local slope of MSE against step (a secant through the two steps nearest
    the target, bisecting the bracket when it would leave it); it stops once a step
    within the target is within MSE_TOLERANCE² of it, or the bracket is
    narrower than MSE_TOLERANCE, and spends at most MSE_STEPS evaluations."""
    floats = [a for a in arrays if a.data.dtype.kind == "f" or a.dtype == "bfloat16"]
    if not floats:
        raise EstimatorSettingError("an MSE target needs floating-point tensors")
    measure = measure or (lambda d: _mse_at(arrays, d, rdoq))
    seen: dict[float, float] = {}
    step, slope = math.sqrt(12 * target), 2.0
    aim = target / MSE_TOLERANCE  # just inside the target
    for _ in range(MSE_STEPS):
        seen[step] = measure(step)
        ok = [d for d, m in seen.items() if m <= target]
        lo = max(ok) if ok else None
        hi = min((d for d, m in seen.items() if m > target and (lo is None or d > lo)), default=None)
        if lo is not None and (seen[lo] * MSE_TOLERANCE ** 2 >= target or (hi is not None and hi / lo <= MSE_TOLERANCE)):
            return lo
        near = sorted(seen, key=lambda d: abs(math.log(max(seen[d], 1e-300) / target)))[:2]
        if len(near) == 2 and seen[near[0]] != seen[near[1]]:  # the local slope of log MSE against log step
            slope = math.log(seen[near[0]] / max(seen[near[1]], 1e-300)) / math.log(near[0] / near[1])
        ref = near[0]
        step = ref * (aim / max(seen[ref], 1e-300)) ** (1 / min(max(slope, 0.5), 4.0))
        if lo is not None and hi is not None and not lo < step < hi:
            step = math.sqrt(lo * hi)
    ok = [d for d, m in seen.items() if m <= target]
    if not ok:
        raise EstimatorSettingError(f"no step found whose MSE is within {target:g}")
    return max(ok)


def shannon_lower_bound(arrays: Sequence[NamedArray], mse: float) -> float:
    """Bits per parameter no code of independent values reaches at this MSE: h - ½ log2(2πe·mse) per float
    value (h the empirical differential entropy, from a histogram with bins of sqrt(mse) / 8), 0 for
    integers (coded exactly, entropy not counted), averaged over all parameters; at least 0."""
    width = math.sqrt(mse) / 8
    bins, counts = [], []
    floats, n = 0, 0
    for a in arrays:  # each tensor's histogram, one at a time; merged once below
        n += a.numel
        if not (a.data.dtype.kind == "f" or a.dtype == "bfloat16"):
            continue
        b, k = np.unique(np.floor(a.values().reshape(-1).astype(np.float64) / width).astype(np.int64),
                         return_counts=True)
        bins.append(b)
        counts.append(k)
        floats += a.numel
    merged, where = np.unique(np.concatenate(bins), return_inverse=True)
    c = np.bincount(where, weights=np.concatenate(counts), minlength=merged.size)
    entropy = float(np.log2(floats) - np.dot(c, np.log2(c)) / floats) + math.log2(width)
    return max(0.0, entropy - 0.5 * math.log2(2 * math.pi * math.e * mse)) * floats / n


def _point(code: str, setting: str, rel: float, bits: float, numel: int, d: dict[str, Any]) -> dict[str, Any]:
    return {"code": code, "setting": setting, "rel": rel, "bits": float(bits), "bits_per_param": bits / numel,
            "mse": d["mse"], "max_abs_err": d["max_abs_err"], "snr_db": d["snr_db"]}


def _plugin(name: str) -> Any:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        have = ", ".join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))) or "none installed"
        raise EstimatorSettingError(f"no rate–distortion plug-in '{name}' (available: {have})")
    return found[0].load()


def _as_list(x: Any) -> list[Any]:
    return [x] if isinstance(x, (int, float)) else list(x)


__all__ = ["rd", "RDCurve", "DEFAULT_RELS", "save_figure", "step_for_mse", "shannon_lower_bound"]
