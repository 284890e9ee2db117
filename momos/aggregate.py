"""Statistics over a sweep: mean ± std over seeds per group, paired differences with t-intervals, the frontier.

A group is every point that shares all axis values but ``seed``. Metrics are
the test accuracy, each logged estimator's final value (bits; ``latent:NAME``
for the latent weights of QAT runs) and the two-part total (bits). Reading a
sweep needs no torch.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kcomplexity.distortion import DISTORTION

from .errors import MoMosError, RunError
from .rundir import read_log, read_result
from .sweep import point_dirs

SEED = "seed"
#: the confidence level of the paired-difference intervals
LEVEL = 0.95


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def load_points(out: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished point of a sweep folder (axes, then metrics) and the axis names, in spec order.

    Points without ``result.json`` (not run, failed or still running) are left out; so is a point whose
    records are damaged (a truncated ``result.json``), named in a warning and in ``df.attrs["damaged"]``, so one
    bad file does not cost the whole table.
    """
    rows, axes, damaged = [], [], []
    for name, values, run_dir in point_dirs(Path(out)):
        axes = list(values)
        try:
            result = read_result(run_dir) if run_dir.is_dir() else None
            two = read_result(run_dir, "two_part.json") if result is not None else None
        except RunError as exc:
            damaged.append(name)
            warnings.warn(f"point {name} left out: {exc}", stacklevel=2)
            continue
        if result is None:
            continue
        last = _mapping(result.get("final"))
        row: dict[str, Any] = {"point": name, **{k: _label(v) for k, v in values.items()},
                               "test_acc": _num(result.get("test_acc"))}
        row.update({k: _num(v) for k, v in _mapping(last.get("complexity")).items()})
        row.update({f"latent:{k}": _num(v) for k, v in _mapping(last.get("complexity_latent")).items()})
        # a lossy code's bits travel with the distortion they buy
        row.update({f"{est}:{k}": _num(d[k]) for est, d in _mapping(last.get("details")).items()
                    if isinstance(d, dict) for k in DISTORTION if k in d})
        if two:
            row["two_part"] = _num(two.get("total_bits"))
            row["no_model"] = _num(two.get("no_model_bits"))
        rows.append(row)
    if not rows:
        why = f"; damaged: {', '.join(damaged)}" if damaged else ""
        raise MoMosError(f"{out}: no point has finished yet (none has a readable result.json{why})")
    df = pd.DataFrame(rows)
    df.attrs["damaged"] = damaged
    return df, axes


def _mapping(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _label(v: Any) -> Any:
    """Axis values as hashable cells (a list of estimators becomes 'a,b')."""
    return ",".join(map(str, v)) if isinstance(v, list) else v


def metric_columns(df: pd.DataFrame, axes: list[str]) -> list[str]:
    return [c for c in df.columns if c not in ("point", *axes)]


def group_axes(axes: list[str]) -> list[str]:
    return [a for a in axes if a != SEED]


def summarise(df: pd.DataFrame, axes: list[str]) -> list[dict[str, Any]]:
    """Per group: its axis values, n, and the mean and sample std (ddof 1) of every metric over seeds."""
    keys, metrics = group_axes(axes), metric_columns(df, axes)
    groups = df.groupby(keys, sort=False, dropna=False) if keys else [((), df)]
    out = []
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        values = sub[metrics].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a metric no point of the group has (latent:*) is NaN
            mean = np.nanmean(values, axis=0) if len(sub) else np.full(len(metrics), np.nan)
            std = np.nanstd(values, axis=0, ddof=1) if len(sub) > 1 else np.full(len(metrics), np.nan)
        out.append({"group": dict(zip(keys, (_plain(k) for k in key))), "n": int(len(sub)),
                    "mean": dict(zip(metrics, map(_plain, mean))), "std": dict(zip(metrics, map(_plain, std))),
                    "seeds": [_plain(s) for s in sub[SEED]] if SEED in sub else []})
    return out


def _plain(x: Any) -> Any:
    """numpy scalars as Python numbers (JSON), NaN kept as NaN."""
    return x.item() if isinstance(x, np.generic) else x


def parse_reference(text: str) -> dict[str, str]:
    """``method=baseline[,q=8]`` -> {"method": "baseline", ...}."""
    ref = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise MoMosError(f"--reference expects key=value[,key=value], got {text!r}")
        ref[key.strip()] = value.strip()
    return ref


def t_interval(diffs: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t confidence interval (NaN bounds below two pairs)."""
    from scipy import stats

    d = diffs[~np.isnan(diffs)]
    if len(d) == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def paired_differences(df: pd.DataFrame, axes: list[str], summary: list[dict[str, Any]],
                       reference: dict[str, str]) -> None:
    """Add ``diff`` to every group of ``summary``: metric(group) - metric(reference), paired by seed.

    The reference group is the one matching ``reference``; when several do
    (the reference axes leave others free), the one agreeing with the group on
    every other axis.
    """
    keys = group_axes(axes)
    unknown = sorted(set(reference) - set(keys))
    if unknown:
        raise MoMosError(f"--reference names {', '.join(unknown)}, which is not an axis of this sweep "
                         f"(axes: {', '.join(keys) or 'none'})")
    if SEED not in df:
        raise MoMosError("paired differences need a seed axis in the sweep")
    metrics = metric_columns(df, axes)

    def matches(group: dict[str, Any]) -> bool:
        return all(str(group[k]) == v for k, v in reference.items())

    candidates = [g for g in summary if matches(g["group"])]
    if not candidates:
        raise MoMosError(f"no group matches --reference {','.join(f'{k}={v}' for k, v in reference.items())}")
    for g in summary:
        ref = candidates[0] if len(candidates) == 1 else next(
            (c for c in candidates if all(str(c["group"][k]) == str(g["group"][k]) for k in keys
                                          if k not in reference)), None)
        g["reference"] = ref["group"] if ref else None
        g["diff"] = {}
        if ref is None or ref is g:  # the reference itself: no difference to show
            continue
        mine = _rows(df, keys, g["group"]).set_index(SEED)[metrics]
        theirs = _rows(df, keys, ref["group"]).set_index(SEED)[metrics]
        common = mine.index.intersection(theirs.index)
        for m in metrics:
            d = mine.loc[common, m].to_numpy(dtype=float) - theirs.loc[common, m].to_numpy(dtype=float)
            mean, lo, hi = t_interval(d)
            g["diff"][m] = {"mean": mean, "lo": lo, "hi": hi, "n": int((~np.isnan(d)).sum())}


def _rows(df: pd.DataFrame, keys: list[str], group: dict[str, Any]) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for k in keys:
        mask &= df[k].astype(str).to_numpy() == str(group[k])
    return df[mask]


def pareto(bits: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Mask of the Pareto-optimal points: no other has fewer-or-equal bits and higher-or-equal accuracy
    with one of them strictly better. NaNs are never optimal."""
    bits, acc = np.asarray(bits, dtype=float), np.asarray(acc, dtype=float)
    ok = ~(np.isnan(bits) | np.isnan(acc))
    out = np.zeros(len(bits), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (bits <= bits[i]) & (acc >= acc[i]) & ((bits < bits[i]) | (acc > acc[i]))
        out[i] = not dominated.any()
    return out


def group_label(group: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in group.items()) or "all"


def to_frame(summary: list[dict[str, Any]], fmt: str = "table") -> pd.DataFrame:
    """The summary as a frame: one row per group; for ``table`` 'mean ± std' strings, else flat numbers."""
    rows = []
    for g in summary:
        row: dict[str, Any] = {"group": group_label(g["group"]), "n": g["n"]}
        for m, mean in g["mean"].items():
            if fmt == "table":
                row[m] = _pm(mean, g["std"][m], m)
            else:
                row[f"{m}:mean"], row[f"{m}:std"] = mean, g["std"][m]
        if fmt == "table" and "diff" in g and g.get("reference") == g["group"]:
            row.update({f"Δ{m}": "(reference)" for m in g["mean"]})
        for m, d in g.get("diff", {}).items():
            if fmt == "table":
                row[f"Δ{m}"] = _ci(d, m)
            else:
                row.update({f"diff:{m}:{k}": v for k, v in d.items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def _fmt(v: float, metric: str) -> str:
    if math.isnan(v):
        return "nan"
    if metric.endswith(DISTORTION):
        return f"{v:.3g}"
    return f"{v:.4f}" if metric == "test_acc" else f"{v:,.0f}"


def _pm(mean: float, std: float, metric: str) -> str:
    return _fmt(mean, metric) + ("" if math.isnan(std) else f" ± {_fmt(std, metric)}")


def _ci(d: dict[str, float], metric: str) -> str:
    if math.isnan(d["mean"]):
        return "—"
    if math.isnan(d["lo"]):
        return f"{_signed(d['mean'], metric)} (n={d['n']})"
    return f"{_signed(d['mean'], metric)} [{_signed(d['lo'], metric)}, {_signed(d['hi'], metric)}]"


def _signed(v: float, metric: str) -> str:
    if metric.endswith(DISTORTION):
        return f"{v:+.3g}"
    return f"{v:+.4f}" if metric == "test_acc" else f"{v:+,.0f}"


def curves(out: str | Path, estimator: str) -> dict[str, pd.DataFrame]:
    """Per group: the estimator's value per epoch, one column per seed (for the band plot).

    Groups are labelled by the axes that differ between them (all but ``seed``).
    """
    points = point_dirs(Path(out))
    keys = [k for k in (points[0][1] if points else {}) if k != SEED
            and len({str(_label(v[k])) for _, v, _ in points}) > 1]
    groups: dict[str, dict[Any, pd.Series]] = {}
    for name, values, run_dir in points:
        if not (run_dir / "log.jsonl").is_file():
            continue
        records = read_log(run_dir / "log.jsonl")
        series = pd.Series({r["epoch"]: _num(_mapping(r.get("complexity")).get(estimator)) for r in records},
                           dtype=float)
        label = group_label({k: _label(values[k]) for k in keys})
        groups.setdefault(label, {})[values.get(SEED, name)] = series
    return {k: pd.DataFrame(v) for k, v in groups.items()}


def bits_metrics(summary: list[dict[str, Any]]) -> list[str]:
    """The metrics of a summary that are bits (estimators, the two-part total), not accuracy or distortion."""
    return sorted({m for g in summary for m in g["mean"]} - {"test_acc", "no_model"}
                  - {m for g in summary for m in g["mean"] if m.endswith(DISTORTION)})


def check_frontier(summary: list[dict[str, Any]], estimator: str) -> None:
    """MoMosError unless ``estimator`` is a bits metric of the sweep (the frontier's x axis is bits)."""
    known = bits_metrics(summary)
    if estimator not in known:
        what = "is the y axis" if estimator == "test_acc" else (
            "is a distortion, not bits" if estimator.endswith(DISTORTION) else "is not in this sweep's logs")
        raise MoMosError(f"--frontier takes bits: '{estimator}' {what}; logged: {', '.join(known)}")


def check_curves(out: str | Path, estimator: str) -> dict[str, pd.DataFrame]:
    """The per-epoch curves of ``estimator``, or MoMosError when no point logged it per epoch (a final figure
    such as ``two_part`` has no curve): checked before any figure is written."""
    frames = curves(out, estimator)
    if not any(frame.notna().to_numpy().any() for frame in frames.values()):
        raise MoMosError(f"--curves draws an estimator logged every epoch; no point logged '{estimator}' per "
                         "epoch (two_part and distortions are final figures)")
    return frames


def _keep_inside(fig: Any, ax: Any, notes: list[Any]) -> None:
    """Keep each point label inside the figure: move it to the other side of its point, and if it is still too
    long, break it at its commas (long group names)."""
    renderer = fig.canvas.get_renderer()
    box = fig.bbox

    def fits(note: Any) -> bool:
        extent = note.get_window_extent(renderer)
        return box.x0 <= extent.x0 and extent.x1 <= box.x1

    for note in notes:
        if fits(note):
            continue
        flip = note.get_horizontalalignment() == "left"
        note.set_horizontalalignment("right" if flip else "left")
        note.set_position((-6 if flip else 6, note.get_position()[1]))
        if not fits(note):
            note.set_text(note.get_text().replace(",", ",\n"))
        if not fits(note):  # the side with more room, with the broken lines
            x = note.xy[0]
            middle = sum(ax.get_xlim()) / 2 if ax.get_xscale() == "linear" else math.sqrt(math.prod(ax.get_xlim()))
            right = x > middle
            note.set_horizontalalignment("right" if right else "left")
            note.set_position((-6 if right else 6, note.get_position()[1]))


def frontier_plot(summary: list[dict[str, Any]], estimator: str, path: str | Path) -> Path:
    """Test accuracy against the estimator's final bits (log x), error bars over seeds, the Pareto set joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kcomplexity.rd import save_figure

    check_frontier(summary, estimator)
    bits = np.array([g["mean"].get(estimator, math.nan) for g in summary], dtype=float)
    acc = np.array([g["mean"]["test_acc"] for g in summary], dtype=float)
    xerr = np.nan_to_num([g["std"].get(estimator, math.nan) for g in summary])
    yerr = np.nan_to_num([g["std"]["test_acc"] for g in summary])
    best = pareto(bits, acc)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.errorbar(bits[~best], acc[~best], xerr=xerr[~best], yerr=yerr[~best], fmt="o", color="0.55", ms=5,
                capsize=2, label="dominated")
    ax.errorbar(bits[best], acc[best], xerr=xerr[best], yerr=yerr[best], fmt="o", color="C3", ms=6, capsize=2,
                label="Pareto-optimal")
    order = np.argsort(bits[best])
    ax.plot(bits[best][order], acc[best][order], "-", color="C3", lw=1.2)
    varying = [k for k in (summary[0]["group"] if summary else {})
               if len({str(g["group"][k]) for g in summary}) > 1]
    middle = np.exp(np.nanmean(np.log(bits[best]))) if best.any() else 1.0
    notes = []
    for i in np.flatnonzero(best):  # labels name only the axes that differ between groups, and stay inside
        right = bits[i] > middle
        notes.append(ax.annotate(group_label({k: summary[i]["group"][k] for k in varying}), (bits[i], acc[i]),
                                 textcoords="offset points", xytext=(-6 if right else 6, -12),
                                 ha="right" if right else "left", fontsize=7))
    ax.set_xscale("log")
    ax.set_xlabel(f"{estimator} (bits, final epoch; mean ± std over seeds)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against description length")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _keep_inside(fig, ax, notes)
    return save_figure(fig, path)


def curves_plot(out: str | Path, estimator: str, path: str | Path) -> Path:
    """Each group's estimator per epoch: the mean over seeds with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kcomplexity.rd import save_figure

    fig, ax = plt.subplots(figsize=(10, 5))
    styles = ["-", "--", ":", "-."]
    for i, (label, frame) in enumerate(check_curves(out, estimator).items()):
        mean, std = frame.mean(axis=1), frame.std(axis=1, ddof=1).fillna(0)
        color = plt.cm.tab20(i % 20)  # 20 distinct colours, then line styles, so no two groups look alike
        ax.plot(mean.index, mean, color=color, ls=styles[(i // 20) % 4], label=label, lw=1.3)
        ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{estimator} (bits; mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["load_points", "summarise", "paired_differences", "t_interval", "pareto", "to_frame", "frontier_plot",
           "curves_plot"]
