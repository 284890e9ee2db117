"""pack / unpack at scale: sizes against score's totals and zstd, speed per core, and a sharded 1-billion-parameter
checkpoint's peak memory.

Run by hand::

    python benchmarks/bench_pack.py table                 # all-MiniLM-L6-v2: sizes, overhead, MB/s vs zstd
    python benchmarks/bench_pack.py big [--params 1e9] [--jobs 2] [--dir D]   # pack + unpack, peak RSS

Speeds are one process (one core) unless --jobs; ratios are against zstd (level 3, the library default, and
level 19, our zstd estimator) compressing and decompressing the same bytes in the same run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_of, child  # noqa: E402
from bench_lossless import minilm, write_sharded  # noqa: E402

import kcomplexity as kc  # noqa: E402


def table(path: Path) -> None:
    import zstandard
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    raw = b"".join(t.tobytes() for t in tensors.values())
    mb = len(raw) / 1e6
    n = sum(t.size for t in tensors.values())
    zs = {lvl: zstandard.ZstdCompressor(level=lvl) for lvl in (3, 19)}
    z_pack = {lvl: mb / best_of(lambda c=c: c.compress(raw), 2) for lvl, c in zs.items()}
    frames = {lvl: c.compress(raw) for lvl, c in zs.items()}
    z_unpack = {lvl: mb / best_of(lambda f=f: zstandard.ZstdDecompressor().decompress(f), 2)
                for lvl, f in frames.items()}
    print(f"{path.parent.parent.name}: {n:,} parameters, {mb:.1f} MB")
    print(f"zstd level 3: pack {z_pack[3]:.0f} MB/s, unpack {z_unpack[3]:.0f} MB/s; level 19: pack {z_pack[19]:.1f} "
          f"MB/s, unpack {z_unpack[19]:.0f} MB/s; sizes {len(frames[3]) * 8 / n:.3f} / {len(frames[19]) * 8 / n:.3f} "
          "bits/param")
    print(f"{'code':15s} {'file bytes':>12s} {'bits/param':>10s} {'score total':>12s} {'overhead':>9s} "
          f"{'pack MB/s':>9s} {'vs z3':>6s} {'unpack MB/s':>11s} {'vs z3':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("fpc", "pco", "zstd", "quant:rel=0.1"):
            out, back = Path(tmp) / "m.kc", Path(tmp) / "back.safetensors"
            t_pack = best_of(lambda: kc.pack(path, out, spec, overwrite=True), 2)
            result = kc.pack(path, out, spec, overwrite=True)
            t_unpack = best_of(lambda: kc.unpack(out, back, overwrite=True), 2)
            est = spec if spec != "zstd" else "zstd:threads=0"
            report = kc.score(str(path), est)
            score_bits = report.total[est]
            pack_mb, unpack_mb = mb / t_pack, mb / t_unpack
            print(f"{spec:15s} {result.file_bits // 8:12,d} {result.code_bits / n:10.4f} "
                  f"{score_bits / report.coded_numel(est):12.4f} {100 * result.overhead_bits / result.file_bits:8.4f}% "
                  f"{pack_mb:9.1f} {pack_mb / z_pack[3]:6.2f} {unpack_mb:11.1f} {unpack_mb / z_unpack[3]:6.2f}",
                  flush=True)
            if result.fallback:
                print(f"    fallback (zstd): {', '.join(result.fallback)}; score leaves them out: "
                      f"{', '.join(report.excluded(est)) or 'none'}")


def big(folder: Path | None, params: float, jobs: int) -> None:
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="kc-pack-big-")) if own else folder
    outputs: Path | None = None
    try:
        if not (folder / "model.safetensors.index.json").is_file():
            t = time.perf_counter()
            count = write_sharded(folder, int(params))
            print(f"wrote {count} tensors of 4096x4096 in {time.perf_counter() - t:.0f}s to {folder}")
        size_gb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
        # in a folder of our own, not in the checkpoint's (pack refuses an output inside an input folder), so no
        # file of the user's is ever replaced or removed
        outputs = Path(tempfile.mkdtemp(prefix="kc-pack-out-"))
        out, back = outputs / "packed.kc", outputs / "unpacked.safetensors"
        res = child("import time, kcomplexity as kc\n"
                    f"t = time.perf_counter(); r = kc.pack({str(folder)!r}, {str(out)!r}, 'fpc', jobs={jobs})\n"
                    "result = {'seconds': time.perf_counter() - t, 'bits': r.file_bits, 'n': r.numel}\n")
        print(f"pack   fpc jobs={jobs}: {res['n']:,} params, {size_gb:.2f} GB -> {res['bits'] / 8e9:.2f} GB "
              f"({res['bits'] / res['n']:.3f} bits/param), {size_gb * 1e3 / res['seconds']:.0f} MB/s, "
              f"peak RSS {res['peak_rss_mb']:.0f} MB (the parent)", flush=True)
        res = child("import time, kcomplexity as kc\n"
                    f"t = time.perf_counter(); kc.unpack({str(out)!r}, {str(back)!r})\n"
                    "result = {'seconds': time.perf_counter() - t}\n")
        print(f"unpack fpc: {size_gb * 1e3 / res['seconds']:.0f} MB/s, peak RSS {res['peak_rss_mb']:.0f} MB",
              flush=True)
    finally:
        if outputs is not None:
            shutil.rmtree(outputs, ignore_errors=True)
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("table", "big"))
    p.add_argument("--path", type=Path, help="a safetensors file (default: all-MiniLM-L6-v2 from its wheel)")
    p.add_argument("--params", type=float, default=1e9)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--dir", type=Path)
    args = p.parse_args()
    if args.what == "table":
        table(args.path or minilm())
    else:
        big(args.dir, args.params, args.jobs)


if __name__ == "__main__":
    main()
