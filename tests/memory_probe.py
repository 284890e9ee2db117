"""Working memory of one codec call, measured in a fresh process under an address-space limit.

``python tests/memory_probe.py SPEC encode|decode ROWS COLS CODE_FILE LIMIT`` codes (or decodes) a ROWS x COLS
float32 matrix of weight-like values (N(0, 0.02²), seeded) and prints one JSON line: the peak resident memory
the call added over what the process held just before it (``/proc/self/status`` VmHWM, reset through
``clear_refs``), as a multiple of the tensor's bytes. The encoder writes its code to CODE_FILE for the decoder;
the decoder never builds the tensor, so only the decode's own memory is counted. The address space is capped
at what the process had plus LIMIT x the tensor, so a blowup ends in MemoryError (reported) instead of
exhausting the machine. Used by tests/test_codec_memory.py and benchmarks/bench_memory.py.
"""
from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from pathlib import Path


def _status(key: str) -> float:
    """A ``/proc/self/status`` field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) * 1024
    raise KeyError(key)


def _main(spec: str, op: str, rows: int, cols: int, code_file: str, limit: float) -> None:
    import numpy as np

    from kcomplexity import codecs
    from kcomplexity.pack import codec_for

    codec = codec_for(spec)
    nbytes = rows * cols * 4
    small = np.random.default_rng(1).standard_normal((8, 64), dtype=np.float32)
    codecs.decode(codec.encode(small))  # every library the call needs is loaded before the baseline
    if op == "encode":
        x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
        call = lambda: codec.encode(x)  # noqa: E731
    else:
        data = Path(code_file).read_bytes()
        call = lambda: codecs.decode(data)  # noqa: E731
    gc.collect()
    base = _status("VmRSS")
    cap = int(_status("VmSize") + limit * nbytes)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    try:
        out = call()
        error = None
    except MemoryError:
        out, error = None, "MemoryError"
    peak = _status("VmHWM")
    if op == "encode" and out is not None:
        Path(code_file).write_bytes(out)
    print(json.dumps({"spec": spec, "op": op, "ratio": (peak - base) / nbytes, "error": error,
                      "code_bytes": len(out) if op == "encode" and out is not None else None}))


def measure(spec: str, op: str, rows: int, cols: int, code_file: str | Path, limit: float = 16.0) -> dict:
    """Run one probe in a fresh interpreter; its JSON result (``ratio``: working memory / tensor bytes)."""
    res = subprocess.run([sys.executable, __file__, spec, op, str(rows), str(cols), str(code_file), str(limit)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    a = sys.argv[1:]
    _main(a[0], a[1], int(a[2]), int(a[3]), a[4], float(a[5]))
