"""Working memory of every codec, encode and decode, as a multiple of the tensor (the bound is 4x).

Run by hand::

    python benchmarks/bench_memory.py [--rows 4096 --cols 4096] [--codes fpc,zstd,...]

Each call runs in a fresh interpreter (tests/memory_probe.py): the peak resident memory the call added over
what the process held just before it, for a ROWS x COLS float32 matrix of N(0, 0.02²) values. Peaks are counted
by the kernel (VmHWM), so the figures do not depend on how busy the machine is; the time column does.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from memory_probe import measure  # noqa: E402

CODES = ("fpc", "zstd", "pco", "quant:rel=0.1", "mdl:s=2", "mdl:s=4", "tcq:rel=0.1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--codes", default=",".join(CODES))
    args = p.parse_args()
    mib = args.rows * args.cols * 4 / 2 ** 20
    print(f"{args.rows} x {args.cols} float32 ({mib:.0f} MiB); working memory / tensor, bound 4x")
    print(f"{'code':<16}{'encode':>8}{'decode':>8}{'code bytes':>14}{'time s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.codes.split(","):
            code = Path(tmp) / "code.bin"
            t = time.perf_counter()
            enc = measure(spec, "encode", args.rows, args.cols, code, limit=100)
            dec = measure(spec, "decode", args.rows, args.cols, code, limit=100)
            flag = "" if max(enc["ratio"], dec["ratio"]) <= 4 else "  over the bound"
            print(f"{spec:<16}{enc['ratio']:>7.2f}x{dec['ratio']:>7.2f}x{enc['code_bytes'] or 0:>14,}"
                  f"{time.perf_counter() - t:>8.1f}{flag}")


if __name__ == "__main__":
    main()
