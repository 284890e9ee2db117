"""fpc, the float-aware lossless code: bit-exact round trips, honest lengths, structure it must find."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kcomplexity as kc
from kcomplexity.codecs import fpc as float_code
from kcomplexity.errors import CorruptFileError, NotApplicableError

SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 1e-40, 3.4e38, -1.0, 1.0]


def _same_bits(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(f"u{a.itemsize}"),
                                                                         b.view(f"u{b.itemsize}"))


def _weights(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(np.float32) * 0.05
    x.reshape(-1)[: len(SPECIALS)] = SPECIALS
    if dtype == "bfloat16":
        return torch.from_numpy(x).to(torch.bfloat16)
    with np.errstate(over="ignore"):  # 3.4e38 overflows float16 to inf: one more special value
        return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 0), (40, 33), (300, 400), (2, 3, 5, 7)])
def test_round_trip_is_bit_exact_with_special_values(rng, dtype, shape):
    x = _weights(rng, shape, dtype) if np.prod(shape) >= len(SPECIALS) else (
        torch.zeros(shape, dtype=torch.bfloat16) if dtype == "bfloat16" else
        np.full(shape, -0.0, dtype=dtype))
    est = kc.estimators.get("fpc")
    data = est.encode(x)
    assert _same_bits(float_code.decode(data), x)
    back = est.decode(data)  # the estimator contract's form: a NamedArray in the tensor's own storage
    assert back.shape == tuple(x.shape) and back.data.tobytes() == (
        x.view(torch.int16).numpy().tobytes() if isinstance(x, torch.Tensor) else x.tobytes())
    if np.prod(shape):
        assert est.bits(x) == 8 * len(data)


def test_nan_payloads_and_subnormals_survive():
    bits = np.array([0x7FC00001, 0xFFFFFFFF, 0x7F800001, 0x00000001, 0x807FFFFF, 0x80000000], dtype=np.uint32)
    x = np.tile(bits, 50).view(np.float32).reshape(30, 10)
    assert _same_bits(float_code.decode(float_code.encode(x)), x)


def test_finds_rows_stored_at_lower_precision(rng):
    # float16 values inside a float32 matrix (an untouched half-precision init): their 13 low bits are zero
    full = rng.standard_normal((400, 256)).astype(np.float32)
    mixed = full.copy()
    mixed[:200] = mixed[:200].astype(np.float16).astype(np.float32)
    saved = (float_code.bits(kc.sources.make_named("f", full)) - float_code.bits(kc.sources.make_named("m", mixed)))
    assert saved > 0.95 * 200 * 256 * 13  # every dropped bit is saved, less a little side information


def test_shorter_than_pcodec_on_trained_like_weights(rng):
    # rows of different scales, as in trained embeddings: the row classes pay off
    x = (rng.standard_normal((2000, 256)) * np.exp(rng.standard_normal((2000, 1)))).astype(np.float32)
    fpc, pco = kc.score({"w": x}, ["fpc", "pco:level=12"]).total.values()
    assert fpc < pco


def test_other_dtypes_and_damaged_codes(rng):
    with pytest.raises(NotApplicableError):
        float_code.encode(np.arange(10))
    assert np.isnan(kc.score({"i": np.arange(10, dtype=np.int32)}, "fpc").total["fpc"])
    data = float_code.encode(rng.standard_normal((64, 64)).astype(np.float32))
    for bad in (b"", data[:3], data[:10], data[:-3], b"XXXX" + data[4:], data[:5] + b"\xff" * 8 + data[13:]):
        with pytest.raises(CorruptFileError):
            float_code.decode(bad)


def data_prefix() -> bytes:
    """A valid fpc container header of a 2 x 2 float32 tensor: random bytes after it reach the code's sections."""
    return float_code.encode(np.ones((2, 2), np.float32))[:8]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(min_size=0, max_size=200))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        float_code.decode(data_prefix() + data)
    except CorruptFileError:
        pass


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300), st.integers(1, 4))
def test_any_float32_bit_patterns_round_trip(patterns, rows):
    x = np.array(patterns, dtype=np.uint32).view(np.float32)
    x = x[: len(x) // rows * rows].reshape(rows, -1) if len(x) >= rows else x
    assert _same_bits(float_code.decode(float_code.encode(x)), x)
