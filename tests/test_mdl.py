"""MDL of a mosaic: the paper's formula, a real code that round-trips, and honest costs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kcomplexity as kc
from kcomplexity.errors import EstimatorSettingError, MDLError
from kcomplexity.estimators.mdl import decode, paper_bits
from kcomplexity.codecs.mosaic import huffman_lengths

HEADER_BITS = 8 * 12  # a few varints; the code is never longer than paper + this


def _mosaic_like(rng, k=300, s=2, m=20000, skew=True, dtype=np.float32):
    motifs = rng.standard_normal((k, s)).astype(dtype)
    idx = (rng.zipf(1.3, m) - 1) % k if skew else rng.integers(0, k, m)
    return motifs[idx].reshape(-1)


def test_paper_formula_and_rac(rng):
    w = _mosaic_like(rng, skew=False)
    r = kc.mdl(w, s=2)
    assert (r.n, r.m, r.s, r.q) == (w.size, w.size // 2, 2, 32)
    assert r.paper_bits == r.k * 2 * 32 + r.m * math.ceil(math.log2(r.k))
    assert r.rac == pytest.approx(r.n * 32 / r.paper_bits)
    assert paper_bits(1, 2, 32, 100) == 64  # one motif needs no index bits


def test_paper_rac_matches_the_papers_figures():
    # s=2, capacity 5%: k = 0.05 m, so RAC = 2q / (0.05*2q + ceil(log2 k)) for q=32
    for n, expect in ((269_722, 3.95), (986_634, 3.52)):   # ResNet20, MLP (their parameter counts)
        m = n // 2
        k = math.floor(0.05 * m)
        assert n * 32 / paper_bits(k, 2, 32, m) == pytest.approx(expect, abs=0.02)


@pytest.mark.parametrize("skew", [True, False])
@pytest.mark.parametrize("s", [1, 2, 3, 8])
def test_encode_decode_round_trip_and_length(rng, skew, s):
    w = _mosaic_like(rng, s=s, m=5000, skew=skew)
    w = np.concatenate([w, rng.standard_normal(s + 1).astype(np.float32)])  # a ragged tail gets padded
    r = kc.mdl(w, s=s)
    data = r.encode()
    assert len(data) * 8 == r.coded_bits
    (back,) = decode(data, [w.size])
    assert back.dtype == np.float32 and np.array_equal(back.view(np.uint32), w.view(np.uint32))
    assert r.coded_bits <= r.paper_bits + HEADER_BITS


def test_skewed_usage_codes_much_shorter_than_paper(rng):
    r = kc.mdl(_mosaic_like(rng, k=4000, m=100_000, skew=True), s=2)
    assert r.coded_bits < 0.8 * r.paper_bits


def test_no_repetition_costs_at_least_nq(rng):
    x = rng.standard_normal(4001).astype(np.float32)
    for s in (1, 2, 4):
        r = kc.mdl(x, s=s)
        assert r.k == r.m  # every block distinct
        assert r.paper_bits >= x.size * 32 and r.coded_bits >= x.size * 32


def test_multi_tensor_padding_and_layout(rng):
    a = rng.standard_normal(7).astype(np.float32)
    b = rng.standard_normal((3, 3)).astype(np.float32)
    r = kc.mdl({"a": a, "b": b}, s=4)
    assert r.m == 2 + 3 and r.n == 16
    back = decode(r.encode(), [7, 9])
    assert np.array_equal(back[0], a) and np.array_equal(back[1], b.ravel())
    with pytest.raises(MDLError, match="layout"):
        decode(r.encode(), [7, 20])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_round_trip(dtype, rng):
    t = torch.from_numpy(_mosaic_like(rng, m=2000)).to(dtype)
    r = kc.mdl(t, s=2)
    assert r.q == {torch.float16: 16, torch.bfloat16: 16, torch.float64: 64}[dtype]
    (back,) = decode(r.encode(), [t.numel()])
    assert torch.equal(torch.from_numpy(np.ascontiguousarray(back)).to(dtype), t)


def _qat_like(rng, shape, q=8):
    """Effective QAT weights as FakeQuant computes them: fl32(round(w / scale) * scale), scale = max|w| / top."""
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    top = 2 ** (q - 1) - 1
    scale = w.abs().max() / top
    wq = torch.round(w / scale).clamp(-top, top) * scale
    return w + (wq - w)  # the straight-through form the module computes with


@pytest.mark.parametrize("q", [4, 8])
def test_q_bit_weights_have_a_real_q_bit_code(rng, q):
    from momos import qat

    model = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.ReLU(), torch.nn.Linear(40, 5))
    qat.attach(model, q)
    eff = qat.effective_weights(model)  # weights on a q-bit grid, biases in float32
    r, full = kc.mdl(eff, s=2, q=q), kc.mdl(eff, s=2)
    assert r.q == q and full.q == 32
    n_w, n_b = 30 * 40 + 40 * 5, 40 + 5
    assert r.n == n_w + n_b
    assert r.coded_bits < full.coded_bits and r.paper_bits <= r.raw_bits
    assert r.raw_bits >= n_w * q + n_b * 32 + 2 * 32   # values plus the two scales
    data = r.encode()
    assert len(data) * 8 == r.coded_bits
    back = decode(data, [t.numel() for t in eff.values()])
    for t, b in zip(eff.values(), back):
        assert np.array_equal(t.numpy().reshape(-1).view(np.uint32), b.view(np.uint32))
    with pytest.raises(MDLError, match="sizes"):
        decode(data)


def test_repeated_level_blocks_are_found_across_tensors(rng):
    # the same 8-bit level blocks in two tensors with different scales: one motif table serves both
    table = rng.integers(-127, 128, (20, 2))
    table[0, 0] = 127  # the top level is used, so the scale is max|w| / 127
    levels = table[rng.integers(0, 20, 3000)].reshape(-1).astype(np.float32)
    a, b = levels * np.float32(0.01), levels[:4000] * np.float32(0.3)
    r = kc.mdl([kc.sources.make_named("a", a), kc.sources.make_named("b", b)], s=2, q=8)
    assert r.q == 8 and r.k <= 20
    assert r.rac > 3  # 16 bits a block as values, 5 bits as an index among 20 motifs
    back = decode(r.encode(), [a.size, b.size])
    assert np.array_equal(back[0], a) and np.array_equal(back[1], b)


def test_q_below_width_of_weights_off_any_grid_is_their_stored_width(rng):
    w = _mosaic_like(rng, m=3000)
    full, q8 = kc.mdl(w, s=2), kc.mdl(w, s=2, q=8)
    assert q8.q == 32 and q8.coded_bits == full.coded_bits and q8.paper_bits == full.paper_bits
    assert decode(q8.encode()).size == w.size


def test_huffman_lengths_are_optimal_prefix_code():
    counts = np.array([45, 13, 12, 16, 9, 5])
    lengths = huffman_lengths(counts)
    assert np.sum(2.0 ** -lengths) <= 1.0
    assert int(np.dot(counts, lengths)) == 224  # textbook example
    assert list(huffman_lengths(np.array([5]))) == [1]


def test_estimator_in_score_and_whole(rng):
    blocks = rng.standard_normal((5, 2)).astype(np.float32)
    w1 = blocks[rng.integers(0, 5, 300)].reshape(-1)
    w2 = blocks[rng.integers(0, 5, 200)].reshape(-1)
    rep = kc.score({"w1": w1, "w2": w2}, ["mdl", "mdl-paper"], whole=True)
    joint = kc.mdl({"w1": w1, "w2": w2}, s=2)
    assert rep.total["mdl"] == joint.coded_bits and rep.total["mdl-paper"] == joint.paper_bits
    # shared motifs: coding both together is cheaper than separately
    assert rep.total["mdl"] < rep.to_frame()["mdl"].sum()


def test_bad_input(rng):
    w = rng.standard_normal(10).astype(np.float32)
    with pytest.raises(MDLError, match="needs the block size"):
        kc.mdl(w)
    for s in (0, -2, 1.5):
        with pytest.raises(MDLError, match="positive integer"):
            kc.mdl(w, s=s)
    with pytest.raises(MDLError, match="float16/bfloat16/float32/float64"):
        kc.mdl(np.arange(10), s=2)
    with pytest.raises(MDLError, match="one dtype"):
        kc.mdl({"a": w, "b": w.astype(np.float16)}, s=2)
    with pytest.raises(EstimatorSettingError):
        kc.estimators.get("mdl", s=0)
    with pytest.raises(MDLError, match="corrupt"):
        decode(kc.mdl(w, s=2).encode()[:6])


def test_unstructured_weights_never_cost_more_than_their_raw_values(rng):
    x = rng.standard_normal(10_001).astype(np.float32)  # no repeated blocks, one ragged block
    r = kc.mdl(x, s=2)
    assert r.paper_bits == x.size * 32 and r.rac == 1.0
    padded = (x.size + 1) * 32
    assert x.size * 32 <= r.coded_bits <= padded + HEADER_BITS
    data = r.encode()
    assert len(data) * 8 == r.coded_bits
    assert np.array_equal(decode(data, sizes=[x.size])[0].view(np.uint32), x.view(np.uint32))
    # structured weights keep the mosaic code
    tiled = np.tile(x[:20], 500)
    assert kc.mdl(tiled, s=2).coded_bits < 0.1 * tiled.size * 32
