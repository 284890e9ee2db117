"""Sweep throughput and overhead, and the speed of aggregating a large sweep (ratios in one process).

Run by hand: ``python benchmarks/bench_sweep.py [--points 4] [--epochs 10] [--dirs 1000]``.

* ``--jobs 2`` against ``--jobs 1`` on digits points (target: >= 1.6x on 2 cores), twice: with the first
  sweep of the process (its worker starts and imports torch while the driver trains) and with the workers a
  previous sweep of the process kept (``momos.sweep.workers_for``);
* the sweep's own overhead: its wall time less the points' own training time
  (each point's ``train()`` wall time, summed), as a share of the latter
  (target: <= 5 %), for ``--jobs 1``;
* ``momos compare`` over ``--dirs`` synthetic finished run directories (target: <= 5 s).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from momos.sweep import Spec, close_workers, sweep


def _spec(points: int, epochs: int, estimators: str) -> Spec:
    return Spec.from_mapping({"base": {"model": "mlp", "data": "digits", "epochs": epochs,
                                       "estimators": [e for e in estimators.split(",") if e]},
                              "grid": {"method": ["baseline", "momos"], "seed": list(range(points // 2))}})


def synthetic(root: Path, n: int, epochs: int = 30) -> None:
    """``n`` finished runs (method x seed) with ``epochs`` logged epochs each, written directly."""
    seeds = list(range(n // 2))
    spec = Spec.from_mapping({"base": {"epochs": epochs}, "grid": {"method": ["baseline", "momos"], "seed": seeds}})
    root.mkdir(parents=True)
    (root / "sweep.toml").write_text(spec.to_toml())
    for name, axes in spec.named():
        run = root / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"format": "momos-run", "format_version": 1,
                                                     "config": {"method": axes["method"], "seed": axes["seed"]}}))
        lines = [json.dumps({"epoch": e, "val_acc": 0.9, "complexity": {"lzma": 1e6 - e, "quant": 5e5 - e}})
                 for e in range(epochs + 1)]
        (run / "log.jsonl").write_text("\n".join(lines) + "\n")
        (run / "result.json").write_text(json.dumps({"test_acc": 0.9 + axes["seed"] * 1e-4,
                                                     "final": json.loads(lines[-1])}))
        (run / "two_part.json").write_text(json.dumps({"total_bits": 1.1e6}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dirs", type=int, default=1000)
    # a run logs its estimators on a second thread while it trains, so with heavy estimators one run already
    # keeps both cores busy; without logging a run is single-threaded (threads = 1) and --jobs 2 can pay off
    ap.add_argument("--estimators", nargs="+", default=["", "lzma,quant"],
                    help="estimator sets to measure ('' = no logging)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for ests in args.estimators:
            spec = _spec(args.points, args.epochs, ests)
            walls, work = {}, {}
            close_workers()
            for jobs, label in ((1, 1), (2, "2 cold"), (2, "2 warm")):
                t = time.perf_counter()
                res = sweep(spec, Path(tmp) / f"{ests or 'none'}-jobs{label}", jobs=jobs, quiet=True)
                walls[label] = time.perf_counter() - t
                work[label] = sum(o.seconds for o in res.outcomes)
                print(f"[{ests or 'no logging'}] --jobs {label}: {len(res.outcomes)} points in {walls[label]:.1f} s "
                      f"(points' own time {work[label]:.1f} s)")
            for label in ("2 cold", "2 warm"):
                print(f"[{ests or 'no logging'}] speed-up --jobs {label} / --jobs 1: {walls[1] / walls[label]:.2f}x "
                      "(target >= 1.6x)")
            print(f"[{ests or 'no logging'}] sweep overhead at --jobs 1: {(walls[1] - work[1]) / work[1]:.1%} of the "
                  "runs' time (target <= 5 %)")
        root = Path(tmp) / "synthetic"
        synthetic(root, args.dirs)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "momos", "compare", str(root), "--reference", "method=baseline",
                        "-f", "json"], check=True, capture_output=True)
        print(f"momos compare over {args.dirs} run directories: {time.perf_counter() - t:.2f} s "
              "(a fresh process, imports included; target <= 5 s)")


if __name__ == "__main__":
    main()
