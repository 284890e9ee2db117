"""Score benchmarks: wrapper overhead, lzma on small tensors, zstd threading, streaming memory on safetensors.

Run by hand: ``python benchmarks/bench_score.py``. Prints ratios against a
baseline measured in the same run.
"""
from __future__ import annotations

import lzma
import os
import sys
import tempfile

import numpy as np
import zstandard

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_of, child  # noqa: E402

import kcomplexity as kc  # noqa: E402


def overhead() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(1 << 19) * 0.02).astype(np.float32)  # 2 MiB
    raw = x.tobytes()
    cases = {
        "zstd-19": (kc.estimators.get("zstd"), lambda: zstandard.ZstdCompressor(level=19).compress(raw)),
        "lzma-9": (kc.estimators.get("lzma"),
                   lambda: lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])),
    }
    for name, (est, direct) in cases.items():
        t_direct = best_of(direct, 3)
        t_ours = best_of(lambda: kc.score(x, [est]), 3)
        print(f"overhead {name:8s} 2 MiB: direct {t_direct:.3f}s  score() {t_ours:.3f}s  ratio {t_ours / t_direct:.3f}")


def small_tensors() -> None:
    """lzma on a model of many small tensors: its dictionary fitted to each against preset 9's 64 MiB."""
    rng = np.random.default_rng(0)
    model = {f"t{i}": (rng.standard_normal(1024) * 0.02).astype(np.float32) for i in range(100)}  # 100 x 4 kB
    preset9 = [{"id": lzma.FILTER_LZMA2, "preset": 9}]
    t_direct = best_of(lambda: [lzma.compress(v.tobytes(), format=lzma.FORMAT_RAW, filters=preset9)
                                for v in model.values()], 3)
    t_ours = best_of(lambda: kc.score(model, ["lzma"]), 3)
    print(f"lzma 100 x 4 kB tensors: preset-9 calls {t_direct:.3f}s  score() {t_ours:.3f}s  "
          f"ratio {t_ours / t_direct:.3f}")


def threading() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4 << 20) * 0.02).astype(np.float32)  # 16 MiB
    single = kc.estimators.get("zstd", level=19, threads=0)
    multi = kc.estimators.get("zstd", level=19)
    t1, tn = best_of(lambda: single.bits(x), 1), best_of(lambda: multi.bits(x), 1)
    print(f"zstd-19 16 MiB on {os.cpu_count()} cores: single {t1:.2f}s  multi {tn:.2f}s  speed-up {t1 / tn:.2f}x  "
          f"(bits/param {single.bits(x) / x.size:.3f} vs {multi.bits(x) / x.size:.3f})")


def streaming_memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.safetensors")
        largest = 32 << 20  # 32 MiB per tensor, 10 tensors: 320 MiB file
        child(
            "import torch; from safetensors.torch import save_file\n"
            f"save_file({{f't{{i}}': torch.randn({largest // 4}) for i in range(10)}}, {path!r})\n"
            "result = {}"
        )
        base = child("import kcomplexity, torch, safetensors\nresult = {}")["peak_rss_mb"]
        run = child(
            "import kcomplexity\n"
            f"r = kcomplexity.score({path!r}, ['zstd:level=1'])\n"
            "result = {'bits': r.total['zstd:level=1']}"
        )["peak_rss_mb"]
        size_mb = os.path.getsize(path) / 2**20
        extra = run - base
        print(f"streaming: file {size_mb:.0f} MiB, largest tensor {largest / 2**20:.0f} MiB, "
              f"peak RSS above import baseline {extra:.0f} MiB = {extra / (largest / 2**20):.2f}x largest tensor "
              f"({extra / size_mb:.2f}x file)")


if __name__ == "__main__":
    overhead()
    small_tensors()
    threading()
    streaming_memory()
