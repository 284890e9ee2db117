"""``kcomplexity demo``: score a small network at initialisation and after real training on digits."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .report import Report
from .scoring import score

DEMO_ESTIMATORS = ("lzma", "zstd", "zstd-bg", "gzip", "bz2", "entropy", "bdm", "bdm-planes")


def train_digits_mlp(epochs: int = 40, seed: int = 0, hidden: int = 64) -> tuple[object, object, float]:
    """A 64-hidden-64-10 MLP trained full-batch with Adam on scikit-learn's bundled digits.

    Returns (model at initialisation, trained model, held-out accuracy in [0, 1]).
    """
    import copy

    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.25, random_state=seed, stratify=y)
    xtr, xte = torch.tensor(xtr, dtype=torch.float32), torch.tensor(xte, dtype=torch.float32)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )
    init = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return init, model, acc


def side_by_side(before: Report, after: Report, labels: Sequence[str] = ("init", "trained")) -> pd.DataFrame:
    """Totals of two reports as one table: bits per parameter and ratio for each."""
    a, b = before.summary(), after.summary()
    return pd.DataFrame({
        f"{labels[0]} bits/param": a["bits_per_param"],
        f"{labels[1]} bits/param": b["bits_per_param"],
        "change %": 100.0 * (b["bits"] - a["bits"]) / a["bits"],
        "kind": a["kind"],
    })


def run(estimators: Sequence[str] = DEMO_ESTIMATORS, epochs: int = 40, seed: int = 0) -> str:
    """Train, score both models and return the printable comparison."""
    from .checks import seed as check_seed

    check_seed(seed)
    init, trained, acc = train_digits_mlp(epochs=epochs, seed=seed)
    before, after = score(init, estimators), score(trained, estimators)
    table = side_by_side(before, after)
    n = before.total_numel
    head = (f"MLP 64-64-64-10 on scikit-learn digits: {n:,} parameters, {epochs} epochs, "
            f"held-out accuracy {acc:.3f}\n"
            "complexity estimates (sum over tensors; bits per parameter, lower = simpler):")
    body = table.to_string(float_format=lambda v: f"{v:.3f}")
    per = pd.concat({"init": before.bits_per_param(), "trained": after.bits_per_param()}, axis=1)
    per = per.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    cols = [c for c in per.columns if c[0] in ("lzma", "bdm")]
    layers = per[cols].to_string(float_format=lambda v: f"{v:.3f}") if cols else ""
    return "\n".join(filter(None, [head, body, "", "per tensor (lzma, bdm; bits/param):" if cols else "", layers]))


__all__ = ["run", "train_digits_mlp", "side_by_side"]
