"""Property-based fuzzing: every mutated file or spec gives a correct result or one of our errors.

Bounded: a fixed number of examples per reader, no deadline per example, well under a minute in all.
"""
from __future__ import annotations

import io
import json
import resource
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import kcomplexity as kc
from kcomplexity.errors import KComplexityError
from momos.rundir import read_log

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: no fuzzed input may make the process grow by more than this
MAX_GROWTH_MB = 512


def _seed_files() -> dict[str, bytes]:
    from safetensors.torch import save as st_save

    torch.manual_seed(0)
    state = {"w": torch.randn(6, 5), "b": torch.arange(4, dtype=torch.int32)}
    pt = io.BytesIO()
    torch.save(state, pt)
    npy = io.BytesIO()
    np.save(npy, np.linspace(-1, 1, 30, dtype=np.float32))
    npz = io.BytesIO()
    np.savez_compressed(npz, a=np.ones((3, 4), np.float32), b=np.arange(5))
    return {".safetensors": st_save(state), ".pt": pt.getvalue(), ".npy": npy.getvalue(), ".npz": npz.getvalue()}


SEEDS = _seed_files()


@st.composite
def mutated(draw, seed: bytes, header_varints: bool = False) -> bytes:
    """A seed with flips, set bytes, cuts, inserts or a truncation; with ``header_varints`` also runs of up to
    200,000 varint continuation bytes near the start, where headers keep their varints."""
    data = bytearray(seed)
    ops = ["flip", "set", "cut", "insert", "truncate"] + (["varint"] if header_varints else [])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(ops))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "varint":  # quadratic to read before varints were bounded to 64 bits
            at = draw(st.integers(0, min(len(data), 24)))
            data[at:at] = b"\xff" * draw(st.integers(8, 200_000))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("suffix", sorted(SEEDS))
def test_mutated_weight_files_score_or_fail_cleanly(suffix, tmp_path):
    start = _peak_mb()
    path = tmp_path / f"w{suffix}"

    @FUZZ
    @given(data=mutated(SEEDS[suffix]))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = kc.score(str(path), ["zstd", "quant"])
        except KComplexityError:
            return
        assert all(v > 0 for v in report.total.values())

    check()
    assert _peak_mb() - start < MAX_GROWTH_MB


def test_mutated_codes_decode_or_fail_cleanly():
    x = np.linspace(-2, 2, 200, dtype=np.float32).reshape(20, 10)
    quant = kc.encode_quantized(x, rel=0.05)
    mosaic = kc.mdl(np.tile(np.array([0.5, -1.0, 0.25], np.float32), 40), s=2).encode()

    @FUZZ
    @given(q=mutated(quant), m=mutated(mosaic))
    def check(q: bytes, m: bytes) -> None:
        for decode, data in ((kc.decode_quantized, q), (kc.estimators.mdl.decode, m)):
            try:
                decode(data)
            except KComplexityError:
                pass

    check()


def test_mutated_logs_keep_every_good_record(tmp_path):
    records = [{"epoch": e, "val_acc": 0.5 + e / 10, "complexity": {"lzma": 100.0 * e}} for e in range(5)]
    seed = "".join(json.dumps(r) + "\n" for r in records).encode()
    path = tmp_path / "log.jsonl"

    @FUZZ
    @given(data=mutated(seed))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = read_log(path, repair=True)
        assert all(isinstance(r, dict) and isinstance(r["epoch"], int) for r in got)
        assert read_log(path) == got  # repaired: reading again finds the same records, nothing bad left

    check()


@FUZZ
@given(spec=st.text(alphabet=st.sampled_from(list("lzmastdbq-:=,.0123456789eanfitrux ")), max_size=30))
def test_estimator_specs_parse_or_fail_cleanly(spec):
    try:
        ests = kc.estimators.resolve(spec)
    except KComplexityError:
        return
    assert ests and all(isinstance(e, kc.estimators.Estimator) for e in ests.values())
