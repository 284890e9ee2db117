"""BDM: DESIGN.md reference values, agreement with pybdm itself, table loading, views and errors."""
from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest

import kcomplexity as kc
from kcomplexity import ctm
from kcomplexity.errors import BDMError, EstimatorSettingError, NotApplicableError

REL = 1e-12


def close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b), 1e-300)


def test_reference_values_from_design():
    z = np.zeros(1000, dtype=int)
    assert close(kc.bdm(z), 31.98545317898864)
    assert close(kc.bdm(np.ones(1000, dtype=int)), 31.98545317898864)
    assert close(kc.bdm(z, partition="recursive"), 39.916281162505776)
    assert close(kc.bdm(z, partition="correlated"), 35.56024045840083)
    assert close(kc.bdm(np.arange(1000) % 2), 33.36576608050834)
    np.random.seed(0)
    x = np.random.randint(0, 2, 1000)
    assert close(kc.bdm(x), 2665.5061130378526)
    assert close(kc.bdm(x, partition="recursive"), 2673.763748172895)
    assert abs(kc.block_entropy(x) - 6.350943045804763) < 1e-12 * 10
    assert abs(kc.nbdm(x) - 0.8971368335331931) < 1e-12
    assert close(kc.bdm(np.zeros((100, 100), dtype=int)), 31.294418671841626)
    assert close(kc.bdm(np.ones((12, 12), dtype=int)), 25.176631293734488)
    np.random.seed(0)
    assert close(kc.bdm(np.random.randint(0, 2, (100, 100))), 18851.01374633371)
    for k, ref in zip((4, 5, 6, 9), (31.332469820821622, 32.091971856765326, 32.94191970939772, 35.459579503426724)):
        assert close(kc.bdm(z, nsymbols=k), ref)


def _pybdm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("pybdm")


def _arrays_1d(rng, k):
    yield rng.integers(0, k, 1000)
    yield np.where(rng.random(997) < 0.85, 0, rng.integers(0, k, 997))
    yield np.tile(rng.integers(0, k, 7), 50)
    yield rng.integers(0, k, 13)
    yield np.zeros(1500, dtype=int)


@pytest.mark.parametrize("k", [2, 4, 5, 6, 9])
@pytest.mark.parametrize("partition", ["ignore", "recursive", "correlated"])
def test_matches_pybdm_1d(k, partition, rng):
    pybdm = _pybdm()
    from pybdm.partitions import PartitionCorrelated, PartitionIgnore, PartitionRecursive

    cls = {"ignore": PartitionIgnore, "recursive": PartitionRecursive, "correlated": PartitionCorrelated}[partition]
    for block in (12, 8, 5):
        ref = pybdm.BDM(ndim=1, nsymbols=k, shape=(block,), partition=cls, warn_if_missing_ctm=False)
        for x in _arrays_1d(rng, k):
            assert close(kc.bdm(x, k, partition, block), ref.bdm(x)), (k, partition, block)
            assert abs(kc.block_entropy(x, k, partition, block) - ref.ent(x)) < 1e-10
            if partition != "correlated":
                assert abs(kc.nbdm(x, k, partition, block) - ref.nbdm(x)) < 1e-10


@pytest.mark.parametrize("partition", ["ignore", "recursive", "correlated"])
def test_matches_pybdm_2d(partition, rng):
    pybdm = _pybdm()
    from pybdm.partitions import PartitionCorrelated, PartitionIgnore, PartitionRecursive

    cls = {"ignore": PartitionIgnore, "recursive": PartitionRecursive, "correlated": PartitionCorrelated}[partition]
    for side in (4, 3, 2):
        ref = pybdm.BDM(ndim=2, shape=(side, side), partition=cls)
        for shape in ((40, 40), (37, 23), (9, 14)):
            for x in (rng.integers(0, 2, shape), (rng.random(shape) < 0.1).astype(int), np.ones(shape, int)):
                assert close(kc.bdm(x, 2, partition, side), ref.bdm(x)), (partition, side, shape)
                assert abs(kc.block_entropy(x, 2, partition, side) - ref.ent(x)) < 1e-10


def test_correlated_shift_matches_pybdm(rng):
    pybdm = _pybdm()
    from pybdm.partitions import PartitionCorrelated

    x = rng.integers(0, 2, 1000)
    for shift in (2, 3, 5):
        ref = pybdm.BDM(ndim=1, partition=PartitionCorrelated, shift=shift)
        assert close(kc.bdm(x, partition="correlated", shift=shift), ref.bdm(x))


@pytest.mark.parametrize("key", list(ctm.CTM_FILES))
def test_table_scan_equals_restricted_unpickler(key):
    raw = gzip.decompress(ctm.ctm_file(*key).read_bytes())
    fast = ctm.scan_pickle(raw, key[1])
    ref = ctm._from_mapping(ctm.unpickle_restricted(raw), key[1])
    assert fast is not None and sorted(fast) == sorted(ref)
    for length in ref:
        np.testing.assert_array_equal(fast[length][0], ref[length][0])
        np.testing.assert_array_equal(fast[length][1], ref[length][1])


def test_scan_rejects_streams_it_cannot_account_for():
    raw = gzip.decompress(ctm.ctm_file(1, 2).read_bytes())
    cut = len(raw) // 2
    # a foreign opcode run inside the stream makes an irregular gap: refuse, do not guess
    assert ctm.scan_pickle(raw[:cut] + b"X" * 100 + raw[cut:], 2) is None


def test_restricted_unpickler_refuses_other_globals():
    import pickle

    evil = pickle.dumps({"a": np.zeros(1)})
    with pytest.raises(pickle.UnpicklingError, match="may not reference"):
        ctm.unpickle_restricted(evil)


def test_missing_strings_get_max_plus_one():
    tab = ctm.table(1, 9, (12,))
    assert tab.missing == pytest.approx(tab.values.max() + 1)
    # 012345678012 uses all nine symbols: far beyond what the 9-symbol table covers at length 12
    block = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2])
    code = int(sum(d * 9 ** (11 - i) for i, d in enumerate(block)))
    if code not in set(tab.codes.tolist()):
        assert kc.bdm(block, nsymbols=9) == pytest.approx(tab.missing)


def test_counts_raw_blocks_not_relabelled():
    a = np.zeros(24, dtype=int)
    b = np.concatenate([np.zeros(12, int), np.ones(12, int)])
    # same CTM per block; two copies of one block vs one copy each of two blocks
    assert kc.bdm(b) - kc.bdm(a) == pytest.approx(kc.bdm(np.zeros(12, int)) - 1.0)


@pytest.mark.parametrize("bad,kwargs,match", [
    (np.zeros(100), {}, "integer symbols"),
    (np.array([0, 1, 2] * 10), {}, "symbols must lie in 0..1"),
    (np.zeros((4, 4, 4), int), {}, "1-D or 2-D"),
    (np.zeros(100, int), {"block": 13}, "allowed: 1..12"),
    (np.zeros((10, 10), int), {"block": 5}, "allowed: 1..4"),
    (np.zeros(100, int), {"nsymbols": 3}, "allowed: 2, 4, 5, 6, 9"),
    (np.zeros((10, 10), int), {"nsymbols": 4}, "binary data only"),
    (np.zeros(5, int), {}, "too short"),
    (np.zeros(100, int), {"partition": "sliding"}, "allowed: ignore, recursive, correlated"),
])
def test_bad_input(bad, kwargs, match):
    with pytest.raises(BDMError, match=match):
        kc.bdm(bad, **kwargs)


def test_no_warning_per_block():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kc.bdm(np.random.default_rng(0).integers(0, 9, 5000), nsymbols=9)


def test_bool_input_is_binary():
    x = np.random.default_rng(0).random(500) > 0.5
    assert kc.bdm(x) == kc.bdm(x.astype(int))


# ---------------------------------------------------------------- estimators on real weights

def test_bdm_estimator_is_bdm_of_signs(rng):
    w = rng.standard_normal(5000).astype(np.float32)
    est = kc.estimators.get("bdm")
    assert est.bits(w) == pytest.approx(kc.bdm((w > 0).astype(int)))
    short = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    assert est.bits(short) == pytest.approx(kc.bdm(np.array([1, 0, 1]), block=3))
    assert est.bits(np.abs(w)) < 0.05 * est.bits(w)  # all-positive weights are simple


def test_bdm_whole_concatenates_signs(small_model):
    rep = kc.score(small_model, "bdm", whole=True)
    signs = np.concatenate([(p.detach().numpy().ravel() > 0) for p in small_model.parameters()]).astype(int)
    assert rep.total["bdm"] == pytest.approx(kc.bdm(signs))


def test_bdm_planes_per_plane_and_na_for_vectors(rng):
    w = rng.standard_normal((64, 48)).astype(np.float32)
    est = kc.estimators.get("bdm-planes", bits=4)
    planes = est.planes(w)
    assert planes.shape == (4,)
    lo, hi = w.min(), w.max()
    q = np.rint((w.astype(np.float64) - lo) * (15 / (hi - lo))).astype(int)
    expect = [kc.bdm((q >> (3 - j)) & 1) for j in range(4)]
    np.testing.assert_allclose(planes, expect, rtol=1e-12)
    assert est.bits(w) == pytest.approx(sum(expect))
    with pytest.raises(NotApplicableError):
        est.bits(rng.standard_normal(100).astype(np.float32))
    rep = kc.score({"w": w, "b": np.ones(5, np.float32)}, ["bdm-planes:bits=4"])
    assert rep.breakdown["bdm-planes:bits=4"]["w"]["plane0"] == pytest.approx(expect[0])
    assert np.isnan(rep.to_frame().loc["b", "bdm-planes:bits=4"])
    assert rep.total["bdm-planes:bits=4"] == pytest.approx(sum(expect))
    # a smooth matrix is far simpler than noise in every plane
    smooth = np.add.outer(np.linspace(0, 1, 64), np.linspace(0, 1, 48)).astype(np.float32)
    assert est.bits(smooth) < 0.5 * est.bits(w)


def test_bdm_k_and_settings(rng):
    w = rng.standard_normal(3000).astype(np.float32)
    for k in (4, 5, 6, 9):
        est = kc.estimators.get("bdm-k", k=k)
        sym = np.minimum(((w - w.min()) * (k / (w.max() - w.min()))).astype(int), k - 1)
        assert est.bits(w) == pytest.approx(kc.bdm(sym, nsymbols=k))
    with pytest.raises(EstimatorSettingError, match="k takes int 4, 5, 6 or 9"):
        kc.estimators.get("bdm-k", k=3)
    with pytest.raises(EstimatorSettingError):
        kc.estimators.get("bdm-planes", bits=0)
