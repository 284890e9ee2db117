"""Every source type turns into the same named arrays; every bad input gets its own error."""
from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import kcomplexity as kc
from kcomplexity.errors import (
    CorruptFileError, EmptyTensorError, NonFiniteError, NonNumericError, SourceNotFoundError,
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
