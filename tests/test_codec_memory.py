"""Every codec codes and decodes a tensor in at most four times the tensor's own memory (#28).

Each call runs in a fresh process whose address space is capped (tests/memory_probe.py): a blowup ends there
in MemoryError instead of exhausting the machine. The shape is a real weight matrix's (a 4096 x 4096 float32
projection, 64 MiB, weight-like N(0, 0.02²) values), large enough that the codecs' fixed buffers (zstd's
level-19 match tables, the blocks values are widened in) are not what is measured; benchmarks/bench_memory.py
prints the same figures.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from memory_probe import measure  # noqa: E402

#: working memory over the tensor's bytes that no codec may pass
BOUND = 4.0
ROWS = COLS = 4096


@pytest.mark.parametrize("spec", ["fpc", "zstd", "pco", "quant:rel=0.1", "mdl:s=2", "mdl:s=4", "tcq:rel=0.1"])
def test_working_memory_is_at_most_four_times_the_tensor(spec, tmp_path):
    code = tmp_path / "code.bin"
    encode = measure(spec, "encode", ROWS, COLS, code)
    decode = measure(spec, "decode", ROWS, COLS, code)
    assert encode["error"] is None and decode["error"] is None, (encode, decode)
    assert encode["ratio"] <= BOUND, encode
    assert decode["ratio"] <= BOUND, decode
