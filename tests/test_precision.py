"""Complexity at a stated precision: the quantised code, rate–distortion, intrinsic complexity, delta."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kcomplexity as kc
from kcomplexity.codecs import quant as quantized
from kcomplexity.callbacks import ComplexityLogger
from kcomplexity.cli import main as kc_main
from kcomplexity.errors import CorruptFileError, EstimatorSettingError, IntrinsicError


def _within_step(decoded: np.ndarray, original: np.ndarray, step: float) -> bool:
    """|decoded - original| <= step/2, up to rounding the decoded value to float32 (half an ulp)."""
    x = np.asarray(original, dtype=np.float64)
    slack = np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)
    return bool(np.all(np.abs(decoded.astype(np.float64) - x) <= step / 2 + slack))


@pytest.mark.parametrize("rel", [3.0, 1.0, 0.3, 0.1, 0.01, 0.001])
@pytest.mark.parametrize("kind", ["gauss", "laplace", "tiled", "few", "tiny", "zeros", "one"])
def test_round_trip_within_half_a_step_and_bits_equal_length(kind, rel, rng):
    x = {"gauss": rng.standard_normal((300, 70)), "laplace": rng.laplace(size=5000) * 3,
         "tiled": np.tile(rng.standard_normal(37), 400), "few": rng.choice([-0.5, 0.0, 0.25, 1.0], 4000),
         "tiny": rng.standard_normal(5) * 1e-6, "zeros": np.zeros((4, 4)), "one": np.array([2.5])}[kind]
    x = x.astype(np.float32)
    data = kc.encode_quantized(x, rel=rel)
    code = quantized.code_quantized(x, rel=rel)
    assert data == code.data
    y = kc.decode_quantized(data)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert _within_step(y, x, code.step)
    assert kc.estimators.get("quant", rel=rel).bits(x) == len(data) * 8
    assert code.mse == pytest.approx(float(np.mean((y.astype(np.float64) - x) ** 2)), rel=1e-9, abs=1e-30)
    assert code.max_abs_err == pytest.approx(float(np.abs(y.astype(np.float64) - x).max()), abs=1e-12)


def test_absolute_step_other_dtypes_and_exact_integers(rng):
    x16 = rng.standard_normal(1000).astype(np.float16)
    y = kc.decode_quantized(kc.encode_quantized(x16, delta=0.05))
    assert y.dtype == np.float32 and _within_step(y, x16, 0.05)
    xb = torch.randn(64, 33).to(torch.bfloat16)
    y = kc.decode_quantized(kc.encode_quantized(xb, delta=0.01))
    assert _within_step(y, xb.float().numpy(), 0.01)
    x64 = rng.standard_normal(500)
    assert kc.decode_quantized(kc.encode_quantized(x64, rel=0.01)).dtype == np.float64
    for ints in (rng.integers(-1000, 1000, 3000).astype(np.int32), rng.integers(0, 3, 100).astype(np.uint8),
                 np.array([2**40, -2**40, 7], dtype=np.int64), rng.random(50) > 0.5):
        out = kc.decode_quantized(kc.encode_quantized(ints, rel=0.3))  # integers ignore the step: exact
        assert out.dtype == ints.dtype and np.array_equal(out, ints)


def test_every_entropy_code_wins_somewhere_and_decodes(rng):
    inputs = {
        "const": np.full(1000, 0.5, np.float32),
        "order0": rng.choice([-1.0, 0.0, 3.0], 20000, p=[0.1, 0.85, 0.05]).astype(np.float32),
        "gaussian": rng.standard_normal(200000).astype(np.float32),
        "laplace": rng.laplace(size=200000).astype(np.float32),
        "zstd": np.tile(rng.standard_normal(50).astype(np.float32), 2000),
    }
    for method, x in inputs.items():
        code = quantized.code_quantized(x, rel=0.1)
        assert code.method == method
        assert _within_step(kc.decode_quantized(code.data), x, code.step)


def test_bits_fall_monotonically_as_rel_grows(rng):
    x = (rng.standard_normal((256, 128)) * np.linspace(0.1, 2, 128)).astype(np.float32)
    rels = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    bits = [kc.estimators.get("quant", rel=r).bits(x) for r in rels]
    assert all(a > b for a, b in zip(bits, bits[1:])), bits
    mses = [quantized.code_quantized(x, rel=r).mse for r in rels]
    assert all(a < b for a, b in zip(mses, mses[1:]))


def test_structured_tensors_code_far_below_noise(rng):
    noise = rng.standard_normal(40000).astype(np.float32)
    tiled = np.tile(noise[:100], 400)
    few = rng.choice(np.array([-1.0, 1.0], np.float32), 40000)
    est = kc.estimators.get("quant", rel=0.05)
    assert est.bits(tiled) < 0.05 * est.bits(noise)
    assert est.bits(few) < 0.25 * est.bits(noise)


def test_a_step_beyond_everything_codes_to_zeros_and_is_reported():
    x = np.array([0.1, -0.2, 0.05], np.float32)
    code = quantized.code_quantized(x, delta=100.0)
    assert code.method == "const" and np.all(kc.decode_quantized(code.data) == 0)
    assert code.max_abs_err == pytest.approx(0.2)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "abc", True])
def test_bad_precision_is_a_clear_error(bad):
    with pytest.raises(EstimatorSettingError):
        kc.encode_quantized(np.ones(3, np.float32), rel=bad)
    with pytest.raises(EstimatorSettingError):
        kc.estimators.get("quant", delta=bad)
    with pytest.raises(EstimatorSettingError):
        kc.estimators.get("delta", rel=bad)
    with pytest.raises(EstimatorSettingError):
        kc.estimators.get("intrinsic", eps=bad)


def test_precision_needs_exactly_one_setting_and_finite_values():
    with pytest.raises(EstimatorSettingError, match="exactly one"):
        kc.encode_quantized(np.ones(3, np.float32), rel=0.1, delta=0.1)
    with pytest.raises(EstimatorSettingError, match="exactly one"):
        kc.encode_quantized(np.ones(3, np.float32))
    with pytest.raises(EstimatorSettingError, match="NaN"):
        kc.encode_quantized(np.array([1.0, np.nan], np.float32), rel=0.1)


def test_corrupt_codes_raise_our_error(rng):
    data = kc.encode_quantized(rng.standard_normal(1000).astype(np.float32), rel=0.1)
    for bad in (b"", b"XX" + data[2:], data[:10], data[:-5], data[:7] + b"\xff" * 30):
        with pytest.raises(CorruptFileError):
            kc.decode_quantized(bad)


def test_report_shows_distortion_beside_bits(tmp_path, rng):
    src = {"w": rng.standard_normal((50, 20)).astype(np.float32), "b": rng.standard_normal(20).astype(np.float32)}
    r = kc.score(src, ["lzma", "quant:rel=0.2"])
    assert r.kinds["quant:rel=0.2"] == "lossy code length"
    summ = r.summary()
    assert summ.loc["quant:rel=0.2", "mse"] > 0 and summ.loc["quant:rel=0.2", "max_abs_err"] > 0
    assert np.isnan(summ.loc["lzma", "mse"])
    d = json.loads(r.to_json())
    assert set(d["details"]["quant:rel=0.2"]) >= {"mse", "max_abs_err"}
    assert d["tensors"]["w"]["details"]["quant:rel=0.2"]["max_abs_err"] <= 0.1 * np.sqrt(np.mean(src["w"] ** 2)) + 1e-6
    assert "quant:rel=0.2:mse" in r.to_csv().splitlines()[0]
    assert "quant:rel=0.2:max_abs_err" in r.to_table()
    # the total's distortion is the MSE over all values
    rows = d["tensors"]
    mse = (rows["w"]["details"]["quant:rel=0.2"]["mse"] * 1000 + rows["b"]["details"]["quant:rel=0.2"]["mse"] * 20) / 1020
    assert d["details"]["quant:rel=0.2"]["mse"] == pytest.approx(mse)


# ---------------------------------------------------------------- intrinsic complexity
def _digits_model_and_loss(epochs: int = 60):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.train()  # deliberately left in train mode: intrinsic must restore the mode too

    def loss_fn(m):
        m.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x), y))

    return model, loss_fn


def _state_bytes(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_intrinsic_leaves_the_model_bit_identical_and_respects_the_budget():
    model, loss_fn = _digits_model_and_loss()
    before = _state_bytes(model)
    r = kc.intrinsic(model, loss_fn, eps=0.1, max_evals=12)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.training
    assert r.evals <= 12 and r.within_budget
    assert r.loss_after <= r.budget == pytest.approx(r.loss_before + 0.1)
    # the figure is reproducible: quantise at the reported rel and evaluate again
    probe = _digits_model_and_loss()[0]
    probe.load_state_dict(before)
    with torch.no_grad():
        for _, p in probe.named_parameters():
            p.copy_(torch.from_numpy(kc.codecs.quant.reconstruct(p.detach(), rel=r.rel)))
    assert loss_fn(probe) == pytest.approx(r.loss_after, rel=1e-6)
    expected = sum(len(kc.encode_quantized(p.detach(), rel=r.rel)) * 8 for p in model.parameters())
    assert r.bits == expected + r.buffer_bits  # and the buffers' lossless code (see test_intrinsic_codes_and_counts_buffers)
    # a tighter budget needs a finer precision and more bits; a relative budget works too
    tight = kc.intrinsic(model, loss_fn, eps=0.01)
    assert tight.rel < r.rel and tight.bits > r.bits
    rel_budget = kc.intrinsic(model, loss_fn, eps=0.5, relative=True)
    assert rel_budget.budget == pytest.approx(rel_budget.loss_before * 1.5)
    # a negative loss (a negative log-likelihood shifted below zero): the relative budget lies above it, not below
    shifted = kc.intrinsic(model, lambda m: loss_fn(m) - 10.0, eps=0.05, max_evals=6, relative=True)
    assert shifted.loss_before < 0 and shifted.budget == pytest.approx(shifted.loss_before + 0.05 * abs(
        shifted.loss_before)) and shifted.budget > shifted.loss_before and shifted.within_budget


def test_intrinsic_bad_input_is_clear_and_the_model_unchanged():
    model, loss_fn = _digits_model_and_loss(epochs=5)
    before = _state_bytes(model)
    calls = {"n": 0}

    def raises_later(m):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("data went away")
        return loss_fn(m)

    with pytest.raises(IntrinsicError, match="data went away"):
        kc.intrinsic(model, raises_later)
    with pytest.raises(IntrinsicError, match="already nan"):
        kc.intrinsic(model, lambda m: float("nan"))
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(IntrinsicError):
            kc.intrinsic(model, loss_fn, eps=bad)
    with pytest.raises(IntrinsicError):
        kc.intrinsic(model, loss_fn, max_evals=2)
    with pytest.raises(IntrinsicError):
        kc.intrinsic(np.zeros(3), loss_fn)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_logger_with_loss_fn_logs_intrinsic_and_delta():
    model, loss_fn = _digits_model_and_loss(epochs=5)
    logger = ComplexityLogger(["quant", "intrinsic:eps=0.05", "delta"], loss_fn=loss_fn)
    first = logger.log(model, epoch=0)
    assert "delta" not in first["complexity"]  # no previous weights yet
    assert first["details"]["intrinsic:eps=0.05"]["loss_after"] <= first["details"]["intrinsic:eps=0.05"]["budget"]
    unchanged = logger.log(model, epoch=1)
    tensors = len(list(model.parameters()))
    # near zero: one constant code (a header of about 20 bytes) per tensor, against ~5 bits/param for quant
    assert unchanged["complexity"]["delta"] <= 8 * 20 * tensors < 0.05 * unchanged["complexity"]["quant"]
    assert unchanged["details"]["delta"]["max_abs_err"] == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    moved = logger.log(model, epoch=2)
    assert moved["complexity"]["delta"] > 10 * unchanged["complexity"]["delta"]
    assert {"mse", "max_abs_err"} <= set(moved["details"]["quant"])


def test_context_estimators_on_a_file_are_not_applicable(tmp_path, rng):
    r = kc.score({"w": rng.standard_normal(10).astype(np.float32)}, ["lzma", "intrinsic", "delta"])
    assert np.isnan(r.total["intrinsic"]) and np.isnan(r.total["delta"]) and r.total["lzma"] > 0


# ---------------------------------------------------------------- rate–distortion
def test_rd_curve_frame_plot_and_momos_points(tmp_path, rng):
    state = {"a": torch.randn(64, 32), "b": torch.randn(32)}
    curve = kc.rd(state, rel=[1.0, 0.1, 0.01], extra={"momos": {"s": 2, "capacity": [0.02, 0.2]}})
    df = curve.to_frame()
    assert {"rel", "bits", "bits_per_param", "mse", "max_abs_err", "snr_db"} <= set(df.columns)
    q = df[df.code == "quant"]
    assert list(q.rel) == [1.0, 0.1, 0.01] and q.bits.is_monotonic_increasing and q.mse.is_monotonic_decreasing
    m = df[df.code == "momos s=2"]
    assert len(m) == 2 and m.bits.is_monotonic_increasing and (m.mse > 0).all()
    png = curve.plot(tmp_path / "sub" / "rd.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_rd_cli(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(40, 40), "b": torch.randn(40)}, str(path))
    assert kc_main(["rd", str(path), "--rel", "0.3,0.03", "-f", "json", "--momos", "s=2", "--capacity", "0.1",
                    "--plot", str(tmp_path / "rd.png")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["code"] for r in rows] == ["quant", "quant", "momos s=2"]
    assert (tmp_path / "rd.png").is_file()
    for argv, needle in ([["rd", str(path), "--rel", "0"], "rel must be finite"],
                         [["rd", str(path), "--rel", "a"], "comma-separated numbers"],
                         [["rd", str(path), "--momos", "s=x"], "integer"],
                         [["rd", str(tmp_path / "missing.safetensors")], "no such file"]):
        assert kc_main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


class _Ramp(torch.nn.Module):
    """One weight vector; its loss is a function of the quantisation step the weights carry."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, 10001))
        self.rms = float(self.w.detach().square().mean().sqrt())


def _window_loss(model: _Ramp) -> float:
    """Passes (0) below rel 0.01 and again for rel in [0.5, 8]; fails (1) elsewhere and when all weights are 0."""
    values = torch.unique(model.w.detach())
    if values.numel() < 2:
        return 1.0
    step = float(torch.diff(values).min())
    rel = step / model.rms
    return 0.0 if rel < 0.01 or 0.5 <= rel <= 8 else 1.0


def test_intrinsic_finds_the_coarsest_passing_precision_of_a_non_monotone_loss():
    model = _Ramp()
    original = model.w.detach().clone()
    # the reference: 400 log-spaced steps, the coarsest that passes
    passing = [r for r in np.geomspace(1e-4, 16, 400) if _window_loss(_quantised(original, float(r))) == 0]
    best = max(passing)
    assert 3 < best < 3.5  # every weight rounds to zero once the step passes 2, i.e. rel ~3.46
    grid = kc.intrinsic(model, _window_loss, eps=0.1)
    bisect = kc.intrinsic(model, _window_loss, eps=0.1, search="bisect")
    assert grid.within_budget and grid.rel >= best / 1.1 and grid.evals <= 24
    assert bisect.rel < 0.011  # bisection settles in the fine window
    assert grid.rel >= bisect.rel and torch.equal(model.w.detach(), original)


def _quantised(original: torch.Tensor, rel: float) -> _Ramp:
    from kcomplexity.codecs.quant import reconstruct

    model = _Ramp()
    with torch.no_grad():
        model.w.copy_(torch.from_numpy(reconstruct(original, rel=rel)))
    return model


def _trained_mlp(hidden: int, seed: int, steps: int):
    """A digits MLP (64-hidden-10, no batch norm) trained full-batch with Adam, and its training loss closure."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    def loss_fn(m):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x), y))

    return net, loss_fn


def test_intrinsic_grid_is_never_finer_than_bisection_on_a_trained_network():
    net, loss_fn = _trained_mlp(64, seed=0, steps=150)
    for eps in (0.01, 0.1, 0.5):
        grid = kc.intrinsic(net, loss_fn, eps=eps)
        bisect = kc.intrinsic(net, loss_fn, eps=eps, search="bisect")
        assert grid.within_budget and grid.evals <= 24
        assert grid.rel >= bisect.rel, (eps, grid.rel, bisect.rel)


def test_intrinsic_codes_and_counts_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    net.train()
    net(x)  # running statistics move off their initial values
    net.eval()

    def loss_fn(m):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x), y))

    r = kc.intrinsic(net, loss_fn, eps=0.1)
    params = sum(len(kc.encode_quantized(p.detach(), rel=r.rel)) * 8 for p in net.parameters())
    from kcomplexity.codecs import FpcCodec, ZstdCodec

    buffers = sum((FpcCodec() if b.dtype == torch.float32 else ZstdCodec()).bits(b) for b in net.buffers()
                  if b.is_floating_point())
    assert r.buffer_bits == buffers > 0 and r.bits == params + buffers
    assert r.details()["buffer_bits"] == buffers


def test_rd_hits_target_mses_with_one_global_step_and_reports_the_shannon_bound(tmp_path, capsys):
    from safetensors.numpy import save_file

    from kcomplexity.rd import _mse_at

    rng = np.random.default_rng(0)
    state = {"w": (rng.standard_normal((300, 200)) * 0.05).astype(np.float32),
             "b": (rng.standard_normal(300) * 0.01).astype(np.float32), "ids": np.arange(64)}
    arrays = list(kc.open_source(state))
    curve = kc.rd(state, mse=[3.8e-6, 1.9e-4])
    df = curve.to_frame()
    assert list(df["target_mse"]) == [3.8e-6, 1.9e-4] and df["rel"].isna().all()
    for _, row in df.iterrows():
        assert row["mse"] <= row["target_mse"]
        assert _mse_at(arrays, row["delta"] * 1.01) > row["target_mse"]  # the largest step within the target
        # a real code sits above the bound for independent values, within a fraction of a bit at this rate
        assert row["slb_bits_per_param"] < row["bits_per_param"] < row["slb_bits_per_param"] + 1.0
        back = kc.decode_quantized(kc.encode_quantized(state["w"], delta=row["delta"]))
        assert np.abs(back - state["w"]).max() <= row["delta"] / 2 * (1 + 1e-6)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    assert kc_main(["rd", str(path), "--mse", "3.8e-6,1.9e-4", "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["target_mse"] for r in rows] == [3.8e-6, 1.9e-4] and all("bits_per_param" in r and "mse" in r
                                                                       for r in rows)


def test_rdoq_codes_decode_and_buy_fewer_bits_at_equal_mse():
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(400, 300)) * 0.03).astype(np.float32)
    code = quantized.code_quantized(x, delta=0.04, rdoq=0.1)
    back = kc.decode_quantized(code.data)  # the same decoder: only the encoder's choice of levels changed
    assert np.array_equal(back, quantized.reconstruct(x, delta=0.04, rdoq=0.1))
    err = np.abs(back.astype(np.float64) - x)
    assert err.max() == pytest.approx(code.max_abs_err) and 0.5 * 0.04 < code.max_abs_err <= 1.5 * 0.04
    plain, rdo = (kc.rd({"w": x}, mse=[1.9e-4], rdoq=lam).to_frame().iloc[0] for lam in (0.0, 0.1))
    assert plain["mse"] <= 1.9e-4 and rdo["mse"] <= 1.9e-4
    assert rdo["bits"] < 0.97 * plain["bits"]  # measured 5 % fewer at this rate
    with pytest.raises(EstimatorSettingError, match="rdoq"):
        kc.rd({"w": x}, rel=[0.1], rdoq=-1)


def test_finer_allocations_stay_within_budget_and_never_cost_more():
    net, loss_fn = _trained_mlp(32, seed=1, steps=100)
    for eps in (0.05, 0.3):
        glob = kc.intrinsic(net, loss_fn, eps=eps)
        tens = kc.intrinsic(net, loss_fn, eps=eps, allocation="tensor")
        rows = kc.intrinsic(net, loss_fn, eps=eps, allocation="row")
        for r in (tens, rows):
            assert r.loss_after <= r.budget and r.within_budget
            assert set(r.tensor_rels) == {n for n, _ in net.named_parameters()}
            assert all(v >= glob.rel for v in r.tensor_rels.values())
        assert not glob.tensor_rels and not tens.row_levels
        assert tens.bits <= glob.bits and tens.evals <= 24 + 3 * 4
        # the row pass starts where the tensor pass ended, and only keeps what stays within budget
        assert rows.tensor_rels == tens.tensor_rels and rows.evals <= tens.evals + 2 * 4 * 3
        assert all(sum(c) == net.state_dict()[n].shape[0] for n, c in rows.row_levels.items())
        assert rows.bits <= tens.bits
    assert rows.row_levels and rows.bits < tens.bits  # at eps 0.3: measured 4,944 bits against 5,072 by tensor
    est = kc.estimators.get("intrinsic:allocation=row")
    assert kc.estimators.get("intrinsic", **est.settings()) == est
    with pytest.raises(EstimatorSettingError, match="allocation"):
        kc.estimators.get("intrinsic:allocation=unit")


def test_row_step_code_round_trips():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((40, 12)) * 0.1).astype(np.float32)
    levels = rng.integers(0, quantized.ROW_LEVELS, size=40)
    code = quantized.code_rows(w, 0.01, levels)
    back = quantized.decode_rows(code.data)
    assert np.array_equal(back, quantized.reconstruct_rows(w, 0.01, levels)) and back.shape == w.shape
    err = np.abs(back.astype(np.float64) - w)
    assert np.all(err <= (0.01 * 2.0 ** levels[:, None]) / 2 * (1 + 1e-6))
    assert float((err ** 2).sum()) == pytest.approx(code.sse) and code.bits == 8 * len(code.data)
    for damaged in (code.data[:-3], code.data[:5], b"XX" + code.data[2:], code.data + b"\0"):
        with pytest.raises(CorruptFileError):
            quantized.decode_rows(damaged)


def test_low_rank_picks_the_shortest_code_within_budget_and_its_code_decodes():
    from kcomplexity.intrinsic import RANK_FRACTIONS, _factor, code_low_rank, decode_low_rank

    net, loss_fn = _trained_mlp(64, seed=2, steps=150)
    full = kc.intrinsic(net, loss_fn, eps=0.3)
    low = kc.intrinsic(net, loss_fn, eps=0.3, low_rank=True)
    assert low.within_budget and low.loss_after <= low.budget
    assert low.bits <= full.bits  # the full-rank search is one of those it compares
    assert low.evals <= 1 + len(RANK_FRACTIONS) * (24 - 1)
    assert all(1 <= k < min(net.state_dict()[n].shape) for n, k in low.ranks.items())
    w = net.state_dict()["0.weight"]
    ab = _factor(w, 0.25)
    code = code_low_rank(w, ab, 0.1)
    back = decode_low_rank(code.data, tuple(w.shape))
    err = back.astype(np.float64) - w.double().numpy()
    assert float((err ** 2).sum()) == pytest.approx(code.sse, rel=1e-6) and code.bits == 8 * len(code.data)
    assert ab[0].shape == (64, 16) and ab[1].shape == (16, 64)
    with pytest.raises(CorruptFileError):
        decode_low_rank(code.data, (65, 64))
    with pytest.raises(IntrinsicError, match="low_rank"):
        kc.intrinsic(net, loss_fn, eps=0.3, low_rank=True, allocation="row")
    assert kc.estimators.get("intrinsic:low_rank=true").low_rank
