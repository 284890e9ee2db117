"""Shared helpers for the benchmarks: best-of-n wall time and peak RSS of a child process."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls, in seconds (least disturbed by a noisy machine)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object, which is returned
    with ``peak_rss_mb`` (the child's peak resident memory) added."""
    wrapper = (
        "import json, resource, sys\n"
        f"{code}\n"
        "out = dict(result)\n"
        "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])
