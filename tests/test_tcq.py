"""The trellis-coded quantisation code: it decodes, stays within its bound, and beats uniform quantisation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kcomplexity as kc
from kcomplexity import codecs
from kcomplexity.cli import main as kc_main
from kcomplexity.codecs.tcq import NEXT, code_tcq, decode_tcq, levels
from kcomplexity.errors import CorruptFileError, EstimatorSettingError


def _weights(rows: int = 200, cols: int = 96, seed: int = 0) -> np.ndarray:
    """Weights whose rows differ in scale, as trained matrices' do."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(0, 0.6, size=(rows, 1)))
    return (rng.standard_t(6, size=(rows, cols)) * 0.02 * scale).astype(np.float32)


@pytest.mark.parametrize("shape", [(1,), (5,), (300,), (17, 9), (64, 33), (4, 5, 6), (600, 2)])
def test_round_trip_within_two_steps_with_the_reported_distortion(shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    x = (rng.standard_normal(shape) * rng.uniform(0.2, 3.0, size=shape[:1] + (1,) * (len(shape) - 1))).astype(
        np.float32)
    code = code_tcq(x, rel=0.1)
    back = decode_tcq(code.data)
    assert back.shape == x.shape and back.dtype == np.float32
    err = back.astype(np.float64) - x
    assert float(np.dot(err.ravel(), err.ravel())) == pytest.approx(code.sse, rel=1e-9, abs=1e-12)
    assert np.abs(err).max() == pytest.approx(code.max_abs_err) and code.max_abs_err <= 2 * code.step * (1 + 1e-6)
    assert code.bits == 8 * len(code.data)


def test_reconstruction_follows_the_state_machine():
    """Decoded values are multiples of the step: even ones under Q0, odd ones (or 0) under Q1."""
    x = _weights(40, 50)
    code = code_tcq(x, delta=0.004)
    units = decode_tcq(code.data).astype(np.float64) / 0.004
    assert np.allclose(units, np.rint(units), atol=1e-3)
    assert np.array_equal(levels(np.array([0, 1, -1, 2, -2]), np.zeros(5, int)), [0, 2, -2, 4, -4])
    assert np.array_equal(levels(np.array([0, 1, -1, 2, -2]), np.ones(5, int)), [0, 1, -1, 3, -3])
    assert sorted(NEXT.ravel().tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # every state is entered twice


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_float_dtypes_decode_in_their_own_storage(dtype):
    x = torch.tensor(_weights(32, 24)).to(getattr(torch, dtype))
    codec = codecs.TcqCodec(rel=0.05)
    data, distortion = codec.encode_measured(x)
    back = codecs.decode(data)
    assert back.dtype == dtype and back.shape == (32, 24)
    err = back.values().astype(np.float64) - x.double().numpy()
    assert np.mean(err ** 2) == pytest.approx(distortion["mse"], rel=1e-6)


def test_integer_tensors_are_coded_exactly():
    ids = np.arange(-50, 250, dtype=np.int32).reshape(30, 10)
    back = codecs.TcqCodec(rel=0.1).decode(codecs.TcqCodec(rel=0.1).encode(ids))
    assert back.dtype == "int32" and np.array_equal(back.data, ids)


def test_damaged_codes_are_corrupt_files():
    data = code_tcq(_weights(30, 20), rel=0.1).data
    for damaged in (data[:len(data) // 2], data[:-4], data[:-1], data[:12]):
        with pytest.raises(CorruptFileError):
            decode_tcq(damaged)
    with pytest.raises(CorruptFileError):
        decode_tcq(codecs.FpcCodec().encode(_weights(4, 4)))


def test_bad_settings_are_refused():
    with pytest.raises(EstimatorSettingError):
        code_tcq(_weights(4, 4), rel=0.1, delta=0.1)
    with pytest.raises(EstimatorSettingError, match="lam"):
        code_tcq(_weights(4, 4), rel=0.1, lam=-1)
    with pytest.raises(EstimatorSettingError, match="NaN"):
        code_tcq(np.array([1.0, np.nan], dtype=np.float32), rel=0.1)
    with pytest.raises(EstimatorSettingError, match="lam"):
        kc.estimators.get("tcq:lam=-2")


def test_fewer_bits_than_uniform_quantisation_at_equal_mse(tmp_path, capsys):
    state = {"w": _weights(), "b": (np.random.default_rng(3).standard_normal(200) * 0.01).astype(np.float32)}
    target = 2e-5
    plain, rdoq, trellis = (kc.rd(state, mse=[target], **o).to_frame().iloc[0]
                            for o in ({}, {"rdoq": 0.1}, {"trellis": True}))
    assert trellis["code"].startswith("tcq") and trellis["mse"] <= target
    assert trellis["mse"] > target / 1.01  # the search found the largest step within the target
    # measured 8.7 % under uniform quantisation and 8.0 % under RDOQ on these weights
    assert trellis["bits"] < 0.95 * plain["bits"] and trellis["bits"] < rdoq["bits"]
    back = codecs.decode(code_tcq(state["w"], delta=trellis["delta"]).data)
    assert np.abs(back.data - state["w"]).max() <= 2 * trellis["delta"] * (1 + 1e-6)

    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    assert kc_main(["rd", str(path), "--mse", str(target), "--trellis", "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["code"].startswith("tcq") and rows[0]["bits"] == trellis["bits"]


def test_the_estimator_and_pack_use_the_same_code(tmp_path):
    state = {"w": _weights(48, 32), "b": np.linspace(-1, 1, 48).astype(np.float32)}
    est = kc.estimators.get("tcq:rel=0.05")
    assert est.settings() == {"rel": 0.05, "lam": 0.3}
    report = kc.score(state, estimators=["tcq:rel=0.05"])
    bits = sum(code_tcq(v, rel=0.05).bits for v in state.values())
    assert report.summary().loc["tcq:rel=0.05", "bits"] == bits
    out = tmp_path / "m.kcpk"
    kc.pack(state, out, estimator="tcq:rel=0.05")
    back = dict(kc.unpack(out))
    for name, x in state.items():
        assert np.array_equal(back[name], decode_tcq(code_tcq(x, rel=0.05).data))


def test_contexts_with_one_symbol_and_outliers_decode():
    rng = np.random.default_rng(0)
    zero_rows = rng.standard_normal((32, 40)).astype(np.float32)
    zero_rows[:8] = 0  # a row class of zeros only
    one_spike = np.zeros((32, 40), dtype=np.float32)
    one_spike[5, 3] = 1.0
    outlier = (rng.standard_normal(20000) * 1e-3).astype(np.float32)
    outlier[0] = 1e3
    for x in (zero_rows, one_spike, outlier):
        code = code_tcq(x, rel=0.1)
        assert np.abs(decode_tcq(code.data) - x).max() <= 2 * code.step * (1 + 1e-6)
