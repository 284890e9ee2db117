"""``intrinsic`` by allocation mode: bits and loss evaluations at the same budget (same process, ratios).

Run by hand: ``python benchmarks/bench_intrinsic.py [--skip-grok]``.

Networks: the digits MLP of bench_precision (64-256-256-10, Adam, 100
full-batch steps) and the grokking network (``momos train --model grok-mlp
--data modadd`` defaults, weight decay 1: about 3 minutes on 2 cores), its
loss the trainer's fixed training subset. For each eps every mode runs:
``global``, ``tensor``, ``row`` and ``global`` with ``low_rank=True``; each
row prints bits, the ratio to ``global`` and the evaluations spent.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

import kcomplexity as kc

MODES = {"global": {}, "tensor": {"allocation": "tensor"}, "row": {"allocation": "row"},
         "global, low_rank": {"low_rank": True}}


def digits_mlp():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    @torch.no_grad()
    def loss_fn(m: torch.nn.Module) -> float:
        return float(torch.nn.functional.cross_entropy(m(x), y))

    return model, loss_fn


def grokking_network(tmp: str):
    from momos.config import TrainConfig
    from momos.evaluation import fixed_loss
    from momos.runs import load_run_model
    from momos.trainer import train

    cfg = TrainConfig(model="grok-mlp", data="modadd", estimators=[])
    train(cfg, f"{tmp}/grok", quiet=True)
    model, ds = load_run_model(f"{tmp}/grok")
    return model, fixed_loss(ds.train, cfg.seed, "cpu")


def table(name: str, model: torch.nn.Module, loss_fn, eps_values: list[float]) -> None:
    print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"{'eps':>6} {'mode':>18} {'bits':>10} {'/ global':>9} {'evals':>6} {'loss after':>11}")
    for eps in eps_values:
        base = None
        for mode, options in MODES.items():
            r = kc.intrinsic(model, loss_fn, eps=eps, **options)
            base = base or r.bits
            print(f"{eps:>6g} {mode:>18} {r.bits:>10,} {r.bits / base:>9.4f} {r.evals:>6} {r.loss_after:>11.4f}"
                  + (f"  ranks {r.ranks}" if r.ranks else ""), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-grok", action="store_true", help="only the digits MLP")
    args = p.parse_args()
    table("digits MLP 64-256-256-10", *digits_mlp(), [0.01, 0.1, 0.3])
    if not args.skip_grok:
        with tempfile.TemporaryDirectory() as tmp:
            table("grokking network (grok-mlp, modadd, weight decay 1)", *grokking_network(tmp), [0.01, 0.1])
