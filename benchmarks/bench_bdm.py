"""BDM speed against pybdm 0.1.0 (same process), and first use of the 9-symbol table.

Run by hand: ``python benchmarks/bench_bdm.py`` (needs pybdm importable:
``pip install 'setuptools<81' pybdm``).
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _timing import best_of, child  # noqa: E402

import kcomplexity as kc  # noqa: E402


def compare(label: str, x: np.ndarray, ref, repeat_ref: int = 1) -> None:
    ours_val = kc.bdm(x)
    t_ours = best_of(lambda: kc.bdm(x), 3)
    t_ref = best_of(lambda: ref.bdm(x), repeat_ref)
    ref_val = ref.bdm(x) if x.size <= 10**6 else None
    agree = "" if ref_val is None else f"  rel.diff {abs(ours_val - ref_val) / ref_val:.1e}"
    print(f"{label:24s} ours {t_ours * 1e3:8.1f} ms ({x.size / t_ours / 1e6:6.0f} M elem/s)  "
          f"pybdm {t_ref:7.2f} s ({x.size / t_ref / 1e6:4.1f} M elem/s)  speed-up {t_ref / t_ours:6.0f}x{agree}")


def first_use_of_table() -> None:
    out = child(
        "import time, numpy as np, kcomplexity\n"
        "t = time.perf_counter(); v = kcomplexity.bdm(np.zeros(1200, dtype=int), nsymbols=9)\n"
        "result = {'seconds': time.perf_counter() - t}"
    )
    base = child("import numpy, kcomplexity\nresult = {}")["peak_rss_mb"]
    print(f"first use of the 9-symbol table: {out['seconds']:.2f} s, peak RSS {out['peak_rss_mb']:.0f} MiB "
          f"({out['peak_rss_mb'] - base:.0f} MiB above the import baseline)")
    ref = child(
        "import time, warnings; warnings.simplefilter('ignore'); import numpy as np\n"
        "from pybdm import BDM\n"
        "t = time.perf_counter(); BDM(ndim=1, nsymbols=9).bdm(np.zeros(1200, dtype=int))\n"
        "result = {'seconds': time.perf_counter() - t}"
    )
    print(f"  pybdm, same task: {ref['seconds']:.2f} s, peak RSS {ref['peak_rss_mb']:.0f} MiB")


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pybdm import BDM
    rng = np.random.default_rng(0)
    kc.bdm(np.zeros(24, dtype=int))  # load tables outside the timings (pybdm loads them in BDM())
    kc.bdm(np.zeros((8, 8), dtype=int))
    one_d, two_d = BDM(ndim=1), BDM(ndim=2)
    compare("1-D binary 1e6", rng.integers(0, 2, 10**6), one_d)
    compare("1-D binary 1e7", rng.integers(0, 2, 10**7), one_d)
    compare("2-D binary 1000x1000", rng.integers(0, 2, (1000, 1000)), two_d)
    first_use_of_table()


if __name__ == "__main__":
    main()
