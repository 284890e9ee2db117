"""Compression estimators: real compressors, real bytes, structure scores far lower than noise."""
from __future__ import annotations

import bz2
import lzma
import zlib

import numpy as np
import pytest
import torch
import zstandard

import kcomplexity as kc
from kcomplexity.estimators import available, get
from kcomplexity.errors import EstimatorSettingError, UnknownEstimatorError
from kcomplexity.estimators.compression import LZMA_PRESET_DICT, lzma_dict_size
from kcomplexity.sources import NamedArray

CODE_ESTIMATORS = ["lzma", "zstd", "gzip", "bz2", "lzma-bg", "zstd-bg"]


def test_registry_lists_every_family():
    names = available()
    for name in CODE_ESTIMATORS + ["entropy", "bdm", "bdm-planes", "bdm-k", "mdl", "mdl-paper"]:
        assert name in names
    with pytest.raises(UnknownEstimatorError, match="available: .*lzma"):
        get("lz4")


def test_settings_in_spec_and_bad_settings():
    assert get("zstd:level=3").level == 3
    assert get("lzma", preset=6).settings()["preset"] == 6
    with pytest.raises(EstimatorSettingError):
        get("zstd:level=40")
    with pytest.raises(EstimatorSettingError):
        get("zstd:nonsense=1")
    with pytest.raises(EstimatorSettingError):
        get("zstd:level")


def test_lengths_equal_direct_compressor_calls(rng):
    x = rng.standard_normal(5000).astype(np.float32)
    raw = x.tobytes()
    lz = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])
    assert get("lzma").bits(x) == 8 * len(lz)
    assert get("zstd").bits(x) == 8 * len(zstandard.ZstdCompressor(level=19).compress(raw))
    assert get("bz2").bits(x) == 8 * len(bz2.compress(raw, 9))
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    assert get("gzip").bits(x) == 8 * len(c.compress(raw) + c.flush())
    planes = x.view(np.uint8).reshape(-1, 4).T
    expect = sum(8 * len(zstandard.ZstdCompressor(level=19).compress(planes[j].tobytes())) for j in range(4))
    assert get("zstd-bg").bits(x) == expect


@pytest.mark.parametrize("preset", [0, 6, 9])
def test_lzma_fitted_dictionary_writes_the_presets_stream(rng, preset):
    """lzma sizes its dictionary to the input; the stream is byte for byte the preset's own, and decodes."""
    props = lzma._decode_filter_properties(  # the table agrees with liblzma's presets
        lzma.FILTER_LZMA2, lzma._encode_filter_properties({"id": lzma.FILTER_LZMA2, "preset": preset}))
    assert props["dict_size"] == LZMA_PRESET_DICT[preset]
    assert lzma_dict_size(9, 10) == 4096 and lzma_dict_size(9, 1025) == 8192 and lzma_dict_size(0, 10**6) == 1 << 18
    motifs = rng.standard_normal((16, 64)).astype(np.float32)
    for x in (rng.standard_normal(300_000).astype(np.float32),  # 1.2 MB: an 8 MiB dictionary
              motifs[rng.integers(0, 16, 5000)].ravel(),  # repeats far apart
              np.where(rng.random(70_000) < 0.05, rng.standard_normal(70_000), 0).astype(np.float16),
              np.zeros(3, np.float32)):
        est = get("lzma", preset=preset)
        full = lzma.compress(x.tobytes(), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": preset}])
        assert est.compress(x.tobytes()) == full
        named = NamedArray("w", x, str(x.dtype))
        assert np.array_equal(est.decode(est.encode(named), named).data, x)


def test_raw_lzma_has_no_container():
    tiny = np.zeros(4, dtype=np.float32)
    assert get("lzma").bits(tiny) < 8 * len(lzma.compress(tiny.tobytes()))


@pytest.mark.parametrize("name", CODE_ESTIMATORS + ["entropy"])
def test_structure_scores_far_below_noise(name, rng):
    n = 20000
    noise = rng.standard_normal(n).astype(np.float32)
    zeros = np.zeros(n, dtype=np.float32)
    repeated = np.tile(rng.standard_normal(16).astype(np.float32), n // 16)
    few = rng.choice(np.array([-0.5, 0.0, 0.25, 1.0], dtype=np.float32), size=n)
    est = get(name)
    b_noise = est.bits(noise)
    assert b_noise > 0.8 * 32 * n if name != "entropy" else b_noise > 0.9 * n * np.log2(n)
    # order-0 entropy sees 16 distinct values in the tiled pattern: 4 of ~14.3 bits/value
    limit = 0.3 if name == "entropy" else 0.2
    for structured in (zeros, repeated, few):
        assert est.bits(structured) < limit * b_noise, name


def test_byte_grouping_beats_plain_on_float_weights(rng):
    x = (rng.standard_normal(100_000) * 0.02).astype(np.float32)
    assert get("zstd-bg").bits(x) < 0.97 * get("zstd").bits(x)
    assert get("lzma-bg").bits(x) < get("lzma").bits(x)
    bd = get("zstd-bg").breakdown(kc.sources.as_named(x))
    assert bd["byte3"] < bd["byte0"]  # sign+exponent byte is far more predictable than mantissa noise


def test_zstd_multithreaded_is_deterministic_and_valid(rng):
    x = rng.standard_normal(2_000_000).astype(np.float32)  # 8 MB, above the threshold
    mt = get("zstd", level=3)
    out = mt.compress(memoryview(x).cast("B"))
    assert zstandard.ZstdDecompressor().decompress(out) == x.tobytes()
    assert mt.bits(x) == get("zstd", level=3, threads=2).bits(x)


def test_entropy_is_n_times_empirical_entropy():
    x = np.array([1, 1, 2, 2, 2, 2, 3, 3], dtype=np.float32)
    h = -(0.25 * np.log2(0.25) * 2 + 0.5 * np.log2(0.5))
    assert get("entropy").bits(x) == pytest.approx(8 * h)


def test_dtype_bytes_are_what_is_compressed():
    t = torch.randn(4096)
    b32 = get("zstd").bits(t)
    b16 = get("zstd").bits(t.half())
    bbf = get("zstd").bits(t.bfloat16())
    assert b16 < 0.7 * b32 and bbf < 0.7 * b32


def test_pco_is_a_real_lossless_code(rng):
    import pcodec

    from kcomplexity.codecs import pco_values

    for x in (rng.standard_normal((200, 50)).astype(np.float32), rng.standard_normal(300).astype(np.float16),
              rng.integers(-5, 5, 400).astype(np.int8), torch.randn(64, 8).to(torch.bfloat16)):
        a = kc.sources.as_named(x)
        est = kc.estimators.get("pco")
        data = est.compress(a)
        assert est.bits(x) == len(data) * 8
        back = pcodec.standalone.simple_decompress(data)
        assert np.array_equal(back, pco_values(a))  # bit-exact, bfloat16 patterns included
    w = rng.standard_normal(50_000).astype(np.float32)
    assert kc.estimators.get("pco:level=12").bits(w) <= kc.estimators.get("pco").bits(w) < 0.9 * 32 * w.size
    assert kc.estimators.get("pco:level=0").bits(w) <= 32 * w.size + 8 * 512  # never much above raw
    with pytest.raises(kc.errors.EstimatorSettingError, match="0..12"):
        kc.estimators.get("pco:level=13")
