"""The result of scoring: a per-tensor table of bits per estimator, and totals."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .distortion import DISTORTION

if TYPE_CHECKING:  # pandas loads on first use: importing it cost a training worker half a second
    import pandas as pd


@dataclass
class Report:
    """Bits per tensor and estimator, plus totals.

    ``bits[est][tensor]`` is a float or NaN where the estimator does not apply
    to that tensor. ``total[est]`` is the sum of per-tensor bits
    (``whole=False``) or the bits of all tensors concatenated (``whole=True``).
    """

    names: list[str]
    numel: dict[str, int]
    dtypes: dict[str, str]
    raw_bits: dict[str, int]
    bits: dict[str, dict[str, float]]
    total: dict[str, float]
    whole: bool
    settings: dict[str, dict[str, Any]]
    kinds: dict[str, str]
    breakdown: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: per estimator and tensor: details such as the distortion of a lossy code (mse, max_abs_err)
    details: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: per estimator: details of the total (a lossy code's mse over all values and max error)
    total_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what the source held besides the weights and was not scored (a checkpoint's optimizer state, step, ...)
    left_out: list[str] = field(default_factory=list)
    #: estimators measured only on all tensors together (they need a model, loss or previous weights): their
    #: per-tensor cells are missing but their total covers every tensor
    whole_only: list[str] = field(default_factory=list)

    @property
    def estimators(self) -> list[str]:
        return list(self.bits)

    @property
    def total_numel(self) -> int:
        return int(sum(self.numel.values()))

    @property
    def total_raw_bits(self) -> int:
        return int(sum(self.raw_bits.values()))

    def excluded(self, est: str) -> list[str]:
        """Tensors ``est`` could not code (integers for a float code, ...), summed per tensor: they are left
        out of that estimator's bits *and* of its parameter count, so bits per parameter stays honest."""
        if self.whole or est in self.whole_only:
            return []
        return [n for n in self.names if math.isnan(self.bits[est].get(n, math.nan))]

    def coded_numel(self, est: str) -> int:
        """Parameters behind ``est``'s total (every tensor but those it could not code)."""
        out = set(self.excluded(est))
        return int(sum(v for n, v in self.numel.items() if n not in out))

    def coded_raw_bits(self, est: str) -> int:
        out = set(self.excluded(est))
        return int(sum(v for n, v in self.raw_bits.items() if n not in out))

    @property
    def lossy(self) -> list[str]:
        """Estimators whose bits buy a distortion (their rows carry ``mse`` and ``max_abs_err``)."""
        return [e for e in self.estimators if self.kinds[e] == "lossy code length"]

    def to_frame(self, distortion: bool = False) -> pd.DataFrame:
        """One row per tensor (index: name): ``numel`` and one column of bits per estimator.

        With ``distortion=True`` each lossy estimator adds ``EST:mse`` and
        ``EST:max_abs_err`` columns beside its bits.
        """
        import pandas as pd

        df = pd.DataFrame({"numel": pd.Series(self.numel, dtype="int64")}, index=pd.Index(self.names, name="tensor"))
        for est, col in self.bits.items():
            df[est] = pd.Series(col, dtype="float64")
            if distortion and est in self.lossy:
                for key in DISTORTION:
                    df[f"{est}:{key}"] = pd.Series({n: d.get(key) for n, d in self.details.get(est, {}).items()},
                                                   dtype="float64")
        return df

    def bits_per_param(self) -> pd.DataFrame:
        """Bits per parameter, per tensor and estimator."""
        df = self.to_frame()
        return df[self.estimators].div(df["numel"], axis=0)

    def ratio(self) -> pd.DataFrame:
        """Raw bits (numel x dtype width) over estimated bits, per tensor (higher = more compressible)."""
        import pandas as pd

        raw = pd.Series(self.raw_bits, dtype="float64")
        return self.to_frame()[self.estimators].rdiv(raw, axis=0)

    def summary(self) -> pd.DataFrame:
        """One row per estimator: total bits, bits per parameter, raw/estimated ratio, kind."""
        import pandas as pd

        rows = {
            est: {
                "bits": b,
                "bits_per_param": b / self.coded_numel(est) if self.coded_numel(est) else math.nan,
                "ratio": self.coded_raw_bits(est) / b if b else math.inf,
                "kind": self.kinds[est],
                **({k: self.total_details.get(est, {}).get(k, math.nan) for k in DISTORTION} if self.lossy else {}),
            }
            for est, b in self.total.items()
        }
        out = pd.DataFrame.from_dict(rows, orient="index")
        out.index.name = "estimator"
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON schema: ``{"tensors": {name: {numel, dtype, bits}}, "total": {est: bits}}`` plus context."""
        return {
            "tensors": {
                name: {
                    "numel": self.numel[name],
                    "dtype": self.dtypes[name],
                    "bits": {est: _num(self.bits[est][name]) for est in self.estimators},
                    **({"details": {est: _jsonable(self.details[est][name]) for est in self.details
                                    if name in self.details[est]}} if self.details else {}),
                }
                for name in self.names
            },
            "total": {est: _num(b) for est, b in self.total.items()},
            "details": {est: _jsonable(d) for est, d in self.total_details.items()},
            "whole": self.whole,
            "numel": self.total_numel,
            "bits_per_param": {est: _num(b / self.coded_numel(est)) if self.coded_numel(est) else None
                               for est, b in self.total.items()},
            # tensors an estimator could not code: out of its bits and of the parameters its bits_per_param divides by
            "excluded": {est: self.excluded(est) for est in self.estimators if self.excluded(est)},
            "settings": self.settings,
            "left_out": self.left_out,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """Per-tensor rows (numel, dtype, bits per estimator) and a final ``(total)`` row."""
        import pandas as pd

        df = self.to_frame(distortion=True)
        df.insert(1, "dtype", pd.Series(self.dtypes))
        total: dict[str, Any] = {"numel": self.total_numel, "dtype": ""}
        for est in self.estimators:
            total[est] = self.total[est]
            total.update({f"{est}:{k}": self.total_details.get(est, {}).get(k) for k in DISTORTION if est in self.lossy})
        df.loc["(total)"] = pd.Series(total)
        return df.to_csv()

    def to_table(self) -> str:
        """Human-readable text: per-tensor bits/param and a totals block."""
        per = self.bits_per_param()
        frame = self.to_frame(distortion=True)
        per.insert(0, "numel", frame["numel"])
        for col in [f"{e}:{k}" for e in self.lossy for k in DISTORTION]:
            per[col] = frame[col]
        formats = {c: (lambda v: f"{v:.3g}") for c in per.columns if c.endswith(DISTORTION)}
        lines = ["bits per parameter, per tensor:", per.to_string(float_format=lambda v: f"{v:.3f}", formatters=formats),
                 ""]
        mode = "all tensors concatenated" if self.whole else "sum over tensors"
        lines.append(f"total ({mode}), {self.total_numel:,} parameters:")
        summ = self.summary()
        lines.append(summ.to_string(formatters={
            "bits": lambda v: f"{v:,.0f}", "bits_per_param": lambda v: f"{v:.3f}", "ratio": lambda v: f"{v:.3f}x",
            **{k: (lambda v: f"{v:.3g}") for k in DISTORTION}}))
        for est in self.estimators:
            out = self.excluded(est)
            if out:
                n = self.total_numel - self.coded_numel(est)
                shown = ", ".join(f"{t} ({self.dtypes[t]})" for t in out[:5]) + (", ..." if len(out) > 5 else "")
                lines.append(f"{est} cannot code {len(out)} tensor(s), {n:,} parameter(s): {shown}; they are left "
                             "out of its bits and of its bits per parameter")
        if self.left_out:
            # what sat beside the nested weights that were scored; it may hold tensors too (optimizer moments, a
            # second copy), so it is named, not judged
            lines.append(f"left out (entries beside the weights that were scored): {', '.join(self.left_out)}")
        return "\n".join(lines)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_num(v) if isinstance(v, float) else v) for k, v in d.items()}


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
