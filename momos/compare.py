"""Compare runs written by ``momos train``: a table of final figures and a plot of every curve."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kcomplexity.rd import save_figure

from .errors import RunError
from .rundir import read_log, read_result, stored_config


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's config, its log as a DataFrame (one row per epoch) and its result (if finished)."""
    run_dir = Path(run_dir)
    config = stored_config(run_dir)
    records = read_log(run_dir / "log.jsonl")
    if not records:
        raise RunError(f"{run_dir} has no logged epochs yet")
    rows = []
    for r in records:
        # a record missing keys, or holding null where a mapping belongs, shows as missing values
        row = {k: _number(r.get(k)) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
        row["epoch"] = r["epoch"]
        row.update({f"bits:{k}": _number(v) for k, v in _mapping(r.get("complexity")).items()})
        # under QAT: the latent float weights MoMos projects, measured beside the q-bit ones (as aggregate names them)
        row.update({f"bits:latent:{k}": _number(v) for k, v in _mapping(r.get("complexity_latent")).items()})
        for label, details in _mapping(r.get("details")).items():
            row.update({f"{label}:{k}": _number(v) for k, v in _mapping(details).items() if k in TABLE_DETAILS})
        row.update({f"proj:{k}": v for k, v in _mapping(r.get("projection")).items()})
        rows.append(row)
    result = read_result(run_dir)
    two = read_result(run_dir, "two_part.json")
    method = config.get("method", "?")
    label = run_dir.name if run_dir.name == method else f"{run_dir.name} ({method})"
    return {"dir": run_dir, "label": label, "config": config, "log": pd.DataFrame(rows).set_index("epoch"),
            "result": result, "two_part": two}


def _mapping(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _number(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else float("nan")


#: details shown beside the bits: the paper's RAC, the distortion a lossy code buys, intrinsic's precision
TABLE_DETAILS = ("rac", "mse", "max_abs_err", "rel")


#: the two-part code's columns (``two_part.json``): weights at rel, labels given them, their sum, the labels with
#: no model beside it, and the distortion
TWO_PART = ("model_bits", "data_bits", "total_bits", "no_model_bits", "rel", "mse")


def shortest_two_part(tab: pd.DataFrame) -> str | None:
    """One sentence on the two-part totals, always beside the no-model code: a run is named shortest only when
    its total beats sending the labels with no model, and a minimum at the edge of the steps tried is a bound."""
    if "two_part:total_bits" not in tab.columns:
        return None
    totals = pd.to_numeric(tab["two_part:total_bits"], errors="coerce").dropna().sort_values()
    if totals.empty:
        return None
    best, low = totals.index[0], float(totals.iloc[0])
    no_model = pd.to_numeric(tab.get("two_part:no_model_bits", pd.Series(dtype=float)), errors="coerce").dropna()
    edges = tab.get("two_part:edge", pd.Series(dtype=object))
    bound = [str(run) for run in totals.index if isinstance(edges.get(run), str)]
    note = (f"; {', '.join(bound)}: the minimum lies at the {edges[bound[0]]} edge of the steps tried, an upper "
            "bound") if bound else ""
    if no_model.empty:
        return f"two-part totals without the no-model code beside them (recompute with momos two-part){note}"
    plain = float(no_model.max())
    if low >= plain:
        return (f"no two-part total beats the labels sent with no model ({plain:,.0f} bits): the shortest, {best} "
                f"({low:,.0f} bits), is {low - plain:,.0f} bits longer, so no model pays for itself here{note}")
    if len(totals) < 2:
        return f"two-part total: {best} ({low:,.0f} bits), {plain - low:,.0f} bits below no model{note}"
    second, high = totals.index[1], float(totals.iloc[1])
    gap = high - low
    return (f"shortest two-part total: {best} ({low:,.0f} bits), {gap:,.0f} bits ({gap / high:.1%}) below "
            f"{second} ({high:,.0f} bits) and {plain - low:,.0f} below no model ({plain:,.0f} bits){note}")


def estimator_columns(runs: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for run in runs:
        cols += [c for c in run["log"].columns if c.startswith("bits:") and c not in cols and c != "bits:rac"]
    return cols


def distinct_labels(runs: list[dict[str, Any]]) -> None:
    """Make run labels unique (rows and legends are keyed by them): clashing labels become the run's path."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run["label"]] = seen.get(run["label"], 0) + 1
    taken: set[str] = set()
    for i, run in enumerate(runs):
        label = run["label"] if seen[run["label"]] == 1 else str(run["dir"])
        run["label"] = label if label not in taken else f"{label} [{i + 1}]"
        taken.add(run["label"])


def table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: method, epochs, final and test accuracy, final bits of each estimator, RAC."""
    distinct_labels(runs)
    rows = {}
    for run in runs:
        last = run["log"].iloc[-1]
        row: dict[str, Any] = {"method": run["config"].get("method"), "epochs": int(run["log"].index[-1]),
                               "val_acc": last["val_acc"],
                               "test_acc": _number((run["result"] or {}).get("test_acc"))}
        for col in estimator_columns(runs):
            label = col.removeprefix("bits:")
            row[label] = last.get(col, float("nan"))
            row.update({f"{label}:{k}": last[f"{label}:{k}"] for k in TABLE_DETAILS
                        if f"{label}:{k}" in run["log"].columns})
        if "bits:rac" in run["log"].columns:  # logs written before rac moved into mdl's details
            row["rac"] = last["bits:rac"]
        two = _mapping(run.get("two_part"))
        row.update({f"two_part:{k}": _number(two.get(k)) for k in TWO_PART if two})
        if two and isinstance(two.get("edge"), str):
            row["two_part:edge"] = two["edge"]
        rows[run["label"]] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "run"
    return out


def plot(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """PNG with one panel per estimator (bits vs epoch, a line per run) and validation accuracy vs epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distinct_labels(runs)
    cols = estimator_columns(runs)
    panels = cols + ["val_acc"]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, panels):
        for run in runs:
            if col in run["log"].columns:
                ax.plot(run["log"].index, run["log"][col], marker=".", label=run["label"])
        ax.set_title(col.removeprefix("bits:") + (" (bits)" if col.startswith("bits:") else ""))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
