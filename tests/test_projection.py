"""MoMos projection: the paper's algorithm, exact reconstruction, determinism, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kcomplexity as kc
import momos
from kcomplexity.errors import NonFiniteError
from momos.assign import nearest
from momos.projection import _blocks


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 7)).to(dtype)


def _distinct_blocks(model, s):
    return torch.unique(_blocks(list(model.named_parameters()), s), dim=0)


@pytest.mark.parametrize("s", [1, 2, 3, 4, 8])
def test_global_projection_properties(s):
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = sum(-(-p.numel() // s) for p in model.parameters())
    pr = momos.project(model, s, capacity=0.05, generator=torch.Generator().manual_seed(0))
    assert pr.k == max(1, math.floor(0.05 * m)) and pr.m == m and not pr.clamped
    # each block equals its motif on its real entries (a ragged tail keeps only the real part)
    motif_of_block = pr.mosaic.motifs[pr.mosaic.index]
    pos = 0
    for p in model.parameters():
        nb = -(-p.numel() // s)
        flat = p.detach().reshape(-1)
        assert torch.equal(flat, motif_of_block[pos:pos + nb].reshape(-1)[: p.numel()])
        pos += nb
    assert len(torch.unique(motif_of_block, dim=0)) <= pr.k
    if all(p.numel() % s == 0 for p in model.parameters()):
        assert len(_distinct_blocks(model, s)) <= pr.k
    assert pr.counts.sum() == m and pr.counts.size == pr.k
    assert torch.all(pr.mosaic.motifs[0] == 0)  # force_zero puts the zero block first
    rec = pr.mosaic.reconstruct()
    for n, p in model.named_parameters():
        assert torch.equal(rec[n], p)
    dist = sum(float(((p.detach().double() - before[n].double()) ** 2).sum()) for n, p in model.named_parameters())
    assert pr.distortion == pytest.approx(dist, rel=1e-9)
    assert pr.changed == sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    # every motif other than zero is one of the original blocks
    orig = _blocks([(n, before[n]) for n in before], s)
    for motif in pr.mosaic.motifs[1:]:
        assert (orig == motif).all(1).any()


def test_each_block_gets_its_nearest_motif():
    model = _model()
    orig = _blocks(list(model.named_parameters()), 2).clone()
    pr = momos.project(model, 2, k=25, generator=torch.Generator().manual_seed(3))
    d = torch.cdist(orig.double(), pr.mosaic.motifs.double())
    chosen = d[torch.arange(orig.shape[0]), pr.mosaic.index]
    assert torch.allclose(chosen, d.min(1).values, atol=1e-6)


def test_without_force_zero_all_motifs_are_sampled_blocks():
    model = _model()
    orig = _blocks(list(model.named_parameters()), 2).clone()
    pr = momos.project(model, 2, k=10, force_zero=False, generator=torch.Generator().manual_seed(1))
    assert pr.k == 10
    for motif in pr.mosaic.motifs:
        assert (orig == motif).all(1).any()


def test_kdtree_and_brute_force_agree():
    g = torch.Generator().manual_seed(0)
    for s in (2, 4, 8, 16):
        blocks = torch.randn(5000, s, generator=g)
        motifs = blocks[torch.randperm(5000, generator=g)[:300]]
        a = nearest(blocks, motifs, method="brute", memory_mb=0.5)
        b = nearest(blocks, motifs, method="kdtree")
        d = torch.cdist(blocks.double(), motifs.double())
        da, db = d.gather(1, a[:, None]), d.gather(1, b[:, None])
        assert (a == b).float().mean() > 0.999
        assert torch.allclose(da, db, atol=1e-5)


def test_deterministic_under_a_seed():
    outs = []
    for _ in range(2):
        model = _model()
        mo = momos.MoMos(s=2, capacity=0.1, seed=7)
        mo(model)
        outs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    # the generator state carries over: a resumed projector continues the same draws
    a = momos.MoMos(s=2, capacity=0.1, seed=7)
    a(_model(seed=1))
    b = momos.MoMos(s=2, capacity=0.1, seed=99)
    b.load_state_dict(a.state_dict())
    m1, m2 = _model(), _model()
    a(m1)
    b(m2)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_k_clamped_and_reported():
    model = _model()
    m = sum(-(-p.numel() // 4) for p in model.parameters())
    pr = momos.project(model, 4, k=10 * m, generator=torch.Generator().manual_seed(0))
    assert pr.clamped and pr.k == m and pr.k_requested == 10 * m
    assert pr.stats()["clamped"] is True


def test_tensor_scope_projects_each_tensor_on_its_own():
    model = _model()
    pr = momos.project(model, 2, capacity=0.2, scope="tensor", generator=torch.Generator().manual_seed(0))
    expect = sum(max(1, math.floor(0.2 * -(-p.numel() // 2))) for p in model.parameters())
    assert pr.k == expect
    for n, p in model.named_parameters():
        ks = max(1, math.floor(0.2 * -(-p.numel() // 2)))
        assert len(torch.unique(p.detach().reshape(-1, 2) if p.numel() % 2 == 0 else
                                torch.cat([p.detach().reshape(-1), p.new_zeros(1)]).reshape(-1, 2), dim=0)) <= ks
    rec = pr.mosaic.reconstruct()
    assert all(torch.equal(rec[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters(dtype):
    model = _model(dtype=dtype)
    pr = momos.project(model, 2, capacity=0.1, generator=torch.Generator().manual_seed(0))
    assert pr.mosaic.motifs.dtype == dtype
    rec = pr.mosaic.reconstruct()
    assert all(torch.equal(rec[n], p) for n, p in model.named_parameters())
    r = kc.mdl(pr.mosaic)
    assert r.q == 16
    back = momos.Mosaic.decode(pr.mosaic.encode(), pr.mosaic)
    assert all(torch.equal(back[n], p) for n, p in model.named_parameters())


def test_mdl_of_projection_and_round_trip(tmp_path):
    model = _model()
    pr = momos.project(model, 2, capacity=0.05, generator=torch.Generator().manual_seed(0))
    r = kc.mdl(pr.mosaic)
    assert (r.k, r.m, r.s, r.q, r.n) == (pr.k, pr.m, 2, 32, sum(p.numel() for p in model.parameters()))
    assert r.paper_bits == pr.k * 2 * 32 + pr.m * math.ceil(math.log2(pr.k))
    assert r.coded_bits <= r.paper_bits + 96
    data = pr.mosaic.encode()
    assert len(data) * 8 == r.coded_bits
    back = momos.Mosaic.decode(data, pr.mosaic)
    assert all(torch.equal(back[n], p) for n, p in model.named_parameters())
    # scored as a plain source, the projected model has at most one extra block per ragged tail
    plain = kc.mdl(model, s=2)
    ragged = sum(p.numel() % 2 for p in model.parameters())
    assert plain.m == r.m and plain.k <= r.k + ragged
    assert plain.coded_bits <= r.coded_bits + ragged * (2 * 32 + 2 * 8) and plain.coded_bits < r.n * 32 / 3
    pr.mosaic.save(tmp_path / "mosaic.safetensors")
    loaded = momos.Mosaic.load(tmp_path / "mosaic.safetensors")
    assert torch.equal(loaded.index, pr.mosaic.index) and loaded.shapes == pr.mosaic.shapes
    assert kc.mdl(loaded).coded_bits == r.coded_bits


@pytest.mark.parametrize("kwargs,match", [
    ({"s": 0, "capacity": 0.1}, "positive integer"),
    ({"s": -1, "capacity": 0.1}, "positive integer"),
    ({"s": 2.5, "capacity": 0.1}, "positive integer"),
    ({"s": 2, "capacity": 0.0}, r"\(0, 1\]"),
    ({"s": 2, "capacity": 1.5}, r"\(0, 1\]"),
    ({"s": 2, "k": 0}, ">= 1"),
    ({"s": 2}, "exactly one of capacity"),
    ({"s": 2, "capacity": 0.1, "k": 3}, "exactly one of capacity"),
    ({"s": 2, "capacity": 0.1, "scope": "layer"}, "unknown scope"),
    ({"s": 2, "capacity": 0.1, "method": "faiss"}, "unknown assignment method"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(momos.MoMosError, match=match):
        momos.project(_model(), **kwargs)


def test_bad_models():
    frozen = _model().requires_grad_(False)
    with pytest.raises(momos.MoMosError, match="no trainable parameters"):
        momos.project(frozen, 2, capacity=0.1)
    model = _model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        momos.project(model, 2, capacity=0.1)
    with pytest.raises(momos.MoMosError):
        momos.MoMos(s=2, capacity=2.0)
    with pytest.raises(kc.errors.CorruptFileError):
        bad = np.zeros(3)
        torch.save({"x": torch.from_numpy(bad)}, "/tmp/_not_a_mosaic.safetensors")
        momos.Mosaic.load("/tmp/_not_a_mosaic.safetensors")
