"""The estimator contract, checked for every registered estimator (no list of names to keep up to date),
and shown to catch estimators that break it."""
from __future__ import annotations

import numpy as np
import pytest

import kcomplexity as kc
from kcomplexity.estimators import Estimator, Setting, conformance, register
from kcomplexity.estimators.base import unregister
from kcomplexity.sources import NamedArray


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", kc.estimators.available())
def test_every_registered_estimator_keeps_the_contract(name, check):
    check(name)


class _Zlib(Estimator):
    """A correct little code (zlib of the raw bytes) that the broken variants below each spoil once."""

    name = "zlib-test"
    SETTINGS = {"level": Setting(int, "0..9", lambda v: 0 <= v <= 9)}

    def __init__(self, level: int = 6) -> None:
        self.level = self._validated(level=level)["level"]

    def encode(self, a: NamedArray) -> bytes:
        import zlib

        return zlib.compress(a.raw(), self.level)

    def decode(self, data: bytes, like: NamedArray) -> NamedArray:
        import zlib

        return NamedArray(like.name, np.frombuffer(zlib.decompress(data), like.data.dtype).reshape(like.shape),
                          like.dtype)

    def _bits(self, a: NamedArray) -> float:
        return 8.0 * len(self.encode(a))


class _ExtraSetting(_Zlib):
    def settings(self):
        return {"level": self.level, "window": 15}  # logged but not accepted back


class _WrongLength(_Zlib):
    def _bits(self, a):
        return 8.0 * len(self.encode(a)) - 8  # forgets a byte


class _Lossy(_Zlib):
    def decode(self, data, like):
        back = super().decode(data, like)
        return NamedArray(back.name, np.round(back.data, 1), back.dtype)  # says lossless, is not


class _Random(_Zlib):
    def _bits(self, a):
        return float(np.random.default_rng().integers(1, 10**6))


class _DishonestProxy(_Zlib):
    kind = "proxy"  # writes a real code yet calls itself a proxy


BROKEN = {"settings_round_trip": _ExtraSetting, "kind": _WrongLength, "round_trip": _Lossy,
          "deterministic": _Random}


@pytest.fixture
def registered():
    names = []

    def add(name, cls):
        register(name, lambda **kw: cls(**kw), cls.SETTINGS)
        names.append(name)
        return name

    yield add
    for name in names:
        unregister(name)


def test_a_correct_plugin_estimator_passes_every_check(registered):
    name = registered("zlib-test", _Zlib)
    conformance.check_estimator(name)


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_the_suite_catches_a_broken_estimator(registered, check):
    cls = BROKEN[check]
    cls.name = "zlib-test"
    name = registered("zlib-test", cls)
    with pytest.raises(conformance.ConformanceError):
        getattr(conformance, f"check_{check}")(name)


def test_the_suite_catches_a_dishonest_kind(registered):
    name = registered("zlib-test", _DishonestProxy)
    with pytest.raises(conformance.ConformanceError, match="call it a code length"):
        conformance.check_kind(name)


def test_constructor_and_spec_string_share_one_validation():
    from kcomplexity.errors import EstimatorSettingError
    from kcomplexity.estimators.compression import LZMA, Pco

    for build in (lambda: Pco(level=99), lambda: kc.estimators.get("pco:level=99"),
                  lambda: kc.estimators.get("pco", level=99), lambda: LZMA(preset=99)):
        with pytest.raises(EstimatorSettingError, match="0..(12|9)"):
            build()


def test_score_passes_context_so_intrinsic_and_delta_work(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    x, y = torch.randn(128, 8), torch.randint(0, 3, (128,))

    def loss_fn(m):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(x), y))

    previous = {k: v.detach().clone() + 0.01 for k, v in model.state_dict().items()}
    report = kc.score(model, "quant,intrinsic,delta", loss_fn=loss_fn, previous=previous)
    numel = sum(p.numel() for p in model.parameters())
    for est in ("intrinsic", "delta"):
        assert np.isfinite(report.total[est]) and report.total[est] > 0
        assert report.coded_numel(est) == numel  # measured on the whole: no tensor is left out
        assert {"mse", "max_abs_err"} <= set(report.total_details[est])
    # without context they are missing, not wrong
    bare = kc.score(model, "intrinsic,delta")
    assert np.isnan(bare.total["intrinsic"]) and np.isnan(bare.total["delta"])


def test_context_names_no_method_concepts():
    from dataclasses import fields

    from kcomplexity.estimators import Context

    assert {f.name for f in fields(Context)} == {"model", "loss_fn", "previous", "extra"}
    mdl = kc.estimators.get("mdl")
    assert set(mdl.reads) == {"mosaic", "q"} and not mdl.needs


def test_the_readme_example_estimator_registers_and_keeps_the_contract(tmp_path, monkeypatch):
    import importlib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## Adding an estimator", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_zlib.py").write_text(block)  # a module, as a plug-in is: its class must pickle
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("readme_zlib")  # ends with check_estimator("zlib")
        assert kc.estimators.get("zlib:level=9").settings() == {"level": 9}
    finally:
        if "zlib" in kc.estimators.available():
            kc.estimators.unregister("zlib")
