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
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import EstimatorSettingError, KComplexityError
from .fileio import write_atomic
from .estimators.precision import summarise
from .codecs.quant import check_precision, code_quantized
from .sources import NamedArray, open_source

DEFAULT_RELS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
ENTRY_POINT_GROUP = "kcomplexity.rd_points"
COLUMNS = ("code", "setting", "rel", "bits", "bits_per_param", "mse", "max_abs_err", "snr_db")


@dataclass
class RDCurve:
    """Points of bits against distortion; ``code`` says which family produced each point."""

    numel: int
    points: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per point: code, setting, rel, bits, bits_per_param, mse, max_abs_err, snr_db."""
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


def rd(source: Any, rel: Sequence[float] = DEFAULT_RELS, include_buffers: bool = False,
       extra: dict[str, dict[str, Any]] | None = None) -> RDCurve:
    """Rate–distortion points of ``source`` at each relative step in ``rel`` (bits; distortion in the weights' units).

    The source is read once, one tensor at a time. ``extra`` asks plug-ins for
    more points, e.g. ``{"momos": {"s": 2, "capacity": [0.01, 0.05]}}``.
    """
    rels = [check_precision(r, None)[0] for r in _as_list(rel)]
    if not rels and not extra:
        raise EstimatorSettingError("rd needs at least one rel")
    codes: list[list[Any]] = [[] for _ in rels]
    arrays: list[NamedArray] = []
    for a in open_source(source, include_buffers=include_buffers):
        for i, r in enumerate(rels):
            codes[i].append(code_quantized(a, rel=r))
        if extra:
            arrays.append(a)
    numel = sum(c.numel for c in codes[0]) if rels else sum(a.numel for a in arrays)
    curve = RDCurve(numel)
    for r, cs in zip(rels, codes):
        est = summarise(cs)
        curve.points.append(_point("quant", f"rel={r:g}", r, est.bits, numel, est.details))
    for name, options in (extra or {}).items():
        for p in _plugin(name)(arrays, **options):
            curve.points.append(_point(p["code"], p["setting"], math.nan, p["bits"], numel, p))
    return curve


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


__all__ = ["rd", "RDCurve", "DEFAULT_RELS", "save_figure"]
