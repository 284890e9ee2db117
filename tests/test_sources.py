"""Every source type turns into the same named arrays; every bad input gets its own error."""
from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import kcomplexity as kc
from kcomplexity.errors import (
    CorruptFileError, EmptyTensorError, EstimatorSettingError, NonFiniteError, NonNumericError, SourceNotFoundError,
    UnsafeCheckpointError, UnsupportedSourceError,
)
from kcomplexity.sources import concat, open_source


def _as_dict(src) -> dict[str, np.ndarray]:
    return {a.name: a.values().copy() for a in open_source(src)}


def test_numpy_and_tensor_sources_agree(rng):
    x = rng.standard_normal((7, 5)).astype(np.float32)
    (a,) = list(open_source(x))
    (b,) = list(open_source(torch.from_numpy(x)))
    assert a.name == b.name == "tensor"
    assert a.dtype == b.dtype == "float32" and a.shape == (7, 5)
    assert bytes(a.raw()) == x.tobytes() == bytes(b.raw())


@pytest.mark.parametrize("dtype,width", [(torch.float32, 32), (torch.float16, 16), (torch.bfloat16, 16)])
def test_tensor_dtypes_keep_their_own_bytes(dtype, width):
    t = torch.linspace(-2, 2, 33).to(dtype)
    (a,) = list(open_source(t))
    assert a.raw_bits == 33 * width
    assert a.dtype == str(dtype).removeprefix("torch.")
    np.testing.assert_array_equal(a.values().astype(np.float32), t.float().numpy())
    if dtype == torch.bfloat16:
        assert bytes(a.raw()) == t.view(torch.int16).numpy().tobytes()


def test_module_trainable_by_default_buffers_on_request(small_model):
    small_model[0].bias.requires_grad_(False)
    names = open_source(small_model).names
    assert "0.weight" in names and "0.bias" not in names and "3.running_mean" not in names
    with_buffers = open_source(small_model, include_buffers=True).names
    assert "3.running_mean" in with_buffers and "3.num_batches_tracked" in with_buffers


def test_state_dict_and_nested_checkpoint(state):
    flat = _as_dict(state)
    nested = _as_dict({"epoch": 3, "state_dict": state, "note": "x"})
    assert flat.keys() == nested.keys() == state.keys()
    deep = _as_dict({"encoder": {"w": torch.ones(3)}, "head": OrderedDict(b=np.zeros(2, np.float32))})
    assert set(deep) == {"encoder.w", "head.b"}


def test_files_safetensors_pt_npz_npy_agree(tmp_path, state):
    save_file(state, tmp_path / "m.safetensors")
    torch.save(state, tmp_path / "m.pt")
    torch.save({"model": state, "step": 10}, tmp_path / "ckpt.pth")
    np.savez(tmp_path / "m.npz", **{k: v.numpy() for k, v in state.items()})
    np.save(tmp_path / "w.npy", state["0.weight"].numpy())
    ref = _as_dict(state)
    for name in ("m.safetensors", "m.pt", "ckpt.pth", "m.npz"):
        got = _as_dict(tmp_path / name)
        assert got.keys() == ref.keys(), name
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    assert list(_as_dict(str(tmp_path / "w.npy"))) == ["w"]


def test_safetensors_is_read_tensor_by_tensor(tmp_path, state):
    save_file(state, tmp_path / "m.safetensors")
    src = open_source(tmp_path / "m.safetensors")
    it = iter(src)
    first = next(it)
    assert first.name == src.names[0] and len(src) == len(state)


def test_missing_file():
    with pytest.raises(SourceNotFoundError, match="no such file"):
        kc.score("/nonexistent/weights.safetensors")


def test_truncated_and_corrupt_safetensors(tmp_path, state):
    save_file(state, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 40])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    for name in ("trunc.safetensors", "junk.safetensors"):
        with pytest.raises(CorruptFileError):
            kc.score(tmp_path / name)


class _Custom:
    def __init__(self):
        self.w = torch.ones(3)


def test_pickle_checkpoint_refused_by_weights_only(tmp_path):
    torch.save({"obj": _Custom()}, tmp_path / "unsafe.pt")
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        kc.score(tmp_path / "unsafe.pt")


def test_corrupt_torch_checkpoint(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CorruptFileError):
        kc.score(tmp_path / "bad.pt")
    (tmp_path / "plain.pkl.pt").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises((CorruptFileError, UnsafeCheckpointError, UnsupportedSourceError)):
        kc.score(tmp_path / "plain.pkl.pt")


def test_nonfinite_values_raise_unless_allowed():
    x = np.ones(100, dtype=np.float32)
    x[3] = np.nan
    x[7] = np.inf
    with pytest.raises(NonFiniteError, match="2 NaN/Inf"):
        kc.score(x)
    rep = kc.score(x, allow_nonfinite=True)
    assert rep.total["lzma"] > 0


def test_empty_tensors_and_empty_sources(tmp_path):
    with pytest.raises(EmptyTensorError):
        kc.score(np.zeros(0, dtype=np.float32))
    with pytest.raises(EmptyTensorError):
        kc.score({"a": torch.ones(3), "b": torch.zeros(0, 4)})
    with pytest.raises(EmptyTensorError):
        kc.score({"epoch": 1})
    save_file({}, tmp_path / "empty.safetensors")
    with pytest.raises(EmptyTensorError):
        kc.score(tmp_path / "empty.safetensors")


def test_non_numeric_tensors():
    with pytest.raises(NonNumericError):
        kc.score(np.array(["a", "b"]))
    with pytest.raises(NonNumericError):
        kc.score(torch.ones(3, dtype=torch.complex64))


def test_unsupported_sources(tmp_path):
    with pytest.raises(UnsupportedSourceError):
        kc.score(42)
    (tmp_path / "w.txt").write_text("1 2 3")
    with pytest.raises(UnsupportedSourceError, match="unknown weights file type"):
        kc.score(tmp_path / "w.txt")


def test_concat_keeps_dtype_or_promotes():
    a = kc.sources.make_named("a", np.ones(3, np.float32))
    b = kc.sources.make_named("b", np.zeros(2, np.float32))
    c = kc.sources.make_named("c", torch.ones(2, dtype=torch.bfloat16))
    assert concat([a, b]).dtype == "float32" and concat([a, b]).numel == 5
    mixed = concat([a, c])
    assert mixed.dtype == "float32"
    np.testing.assert_array_equal(mixed.values(), np.ones(5, np.float32))


def test_training_checkpoint_yields_the_weights_and_names_what_it_left_out(tmp_path):
    weights = {"layer.weight": torch.randn(8, 4), "layer.bias": torch.randn(8)}
    for key in ("model_state", "net", "module", "ema"):
        ckpt = {key: weights, "optimizer": {"state": {0: {"exp_avg": torch.randn(8, 4)}}}, "step": torch.tensor(7)}
        torch.save(ckpt, tmp_path / "ckpt.pt")
        report = kc.score(tmp_path / "ckpt.pt", "zstd")
        assert report.names == ["layer.weight", "layer.bias"], key
        assert report.left_out == ["optimizer", "step"]
        assert "left out (entries beside the weights that were scored): optimizer, step" in report.to_table()
        assert json.loads(report.to_json())["left_out"] == ["optimizer", "step"]
    plain = kc.score(weights, "zstd")
    assert plain.left_out == [] and len(plain.names) == 2


def _shard(tmp_path, tensors_by_shard):
    weight_map = {}
    for shard, tensors in tensors_by_shard.items():
        save_file(tensors, str(tmp_path / shard))
        weight_map.update({name: shard for name in tensors})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoint_scores_as_one_model(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = {"a.weight": torch.randn(64, 32, generator=g), "a.bias": torch.randn(64, generator=g)}
    b = {"b.weight": torch.randn(16, 64, generator=g)}
    _shard(tmp_path, {"model-00001-of-00002.safetensors": a, "model-00002-of-00002.safetensors": b})
    whole = kc.score({**a, **b}, ["zstd", "lzma"])
    for path in (tmp_path, tmp_path / "model.safetensors.index.json"):
        report = kc.score(path, ["zstd", "lzma"])
        assert report.names == ["a.weight", "a.bias", "b.weight"]
        assert report.total == whole.total and report.bits == whole.bits


def test_sharded_checkpoint_errors(tmp_path):
    _shard(tmp_path, {"s1.safetensors": {"w": torch.ones(3)}})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../s1.safetensors"}}))
    with pytest.raises(CorruptFileError, match="beside the index"):
        kc.score(tmp_path)
    index.write_text(json.dumps({"weight_map": {"w": "missing.safetensors"}}))
    with pytest.raises(SourceNotFoundError, match="missing"):
        kc.score(tmp_path)
    index.write_text(json.dumps({"weight_map": {"w": "s1.safetensors", "v": "s1.safetensors"}}))
    with pytest.raises(CorruptFileError, match="lacks 1 tensor"):
        kc.score(tmp_path)
    index.write_text("{not json")
    with pytest.raises(CorruptFileError, match="not a safetensors index"):
        kc.score(index)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedSourceError, match="directory without"):
        kc.score(tmp_path / "empty")


def test_model_name_resolves_from_the_local_hugging_face_cache_only(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0123abc")
    save_file({"w": torch.arange(12, dtype=torch.float32)}, str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    report = kc.score("someone/tiny", "zstd")
    assert report.names == ["w"]
    with pytest.raises(SourceNotFoundError):
        kc.score("someone/not-cached", "zstd")  # not in the cache: no download, a clear error


def test_jobs_give_identical_reports(tmp_path):
    g = torch.Generator().manual_seed(1)
    weights = {f"t{i}": torch.randn(200 + 37 * i, 50, generator=g) for i in range(7)}
    save_file(weights, str(tmp_path / "w.safetensors"))
    # threads; processes sent the tensors; processes reading them from the file themselves
    for source, ests in ((weights, ["zstd", "lzma", "zstd-bg"]), (weights, ["zstd", "quant", "pco", "fpc"]),
                         (tmp_path / "w.safetensors", ["zstd", "fpc"])):
        one = kc.score(source, ests, jobs=1)
        two = kc.score(source, ests, jobs=2)
        assert one.to_json() == two.to_json()
    with pytest.raises(EstimatorSettingError, match="jobs"):
        kc.score(weights, "zstd", jobs=0)


def test_scoring_files_needs_neither_torch_nor_the_training_extras(tmp_path):
    import subprocess
    import sys

    from safetensors.numpy import save_file as save_numpy

    x = np.random.default_rng(0).standard_normal((60, 40)).astype(np.float32)
    save_numpy({"a": x}, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", a=x)
    torch.save({"a": torch.from_numpy(x)}, tmp_path / "w.pt")
    code = (
        "import sys\n"
        "for m in ('torch', 'sklearn', 'matplotlib'):\n"
        "    sys.modules[m] = None  # as if not installed\n"
        "from kcomplexity.cli import main\n"
        f"codes = [main(['score', {str(tmp_path / 'w.safetensors')!r}, '-e', 'zstd,fpc,pco,quant,bdm', '-q']),\n"
        f"         main(['score', {str(tmp_path / 'w.npz')!r}, '-e', 'mdl:s=2', '-q']),\n"
        f"         main(['score', {str(tmp_path / 'w.pt')!r}, '-q'])]\n"
        "print('CODES', codes)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "CODES [0, 0, 2]" in res.stdout, res.stderr
    assert "needs torch installed" in res.stderr and "Traceback" not in res.stderr
