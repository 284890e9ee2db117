"""kc.pack / kc.unpack and the pack/unpack commands: one file per checkpoint that decodes back."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import kcomplexity as kc
from kcomplexity.errors import CorruptFileError, KComplexityError
from kcomplexity.fileio import OutputIsInputError
from kcomplexity.pack import PackExistsError, read_index


def minilm_like(scale: int = 1) -> dict[str, np.ndarray]:
    """Tensors shaped like all-MiniLM-L6-v2 (22.7M parameters at scale 1): embeddings, 6 layers of attention and
    MLP matrices, LayerNorms, and the int64 position ids that float codes cannot take."""
    rng = np.random.default_rng(0)
    d, ff, vocab = 384 // scale, 1536 // scale, 30522 // scale
    out = {"embeddings.word_embeddings.weight": rng.standard_normal((vocab, d), np.float32) * 0.05,
           "embeddings.position_embeddings.weight": rng.standard_normal((512, d), np.float32) * 0.02,
           "embeddings.position_ids": np.arange(512, dtype=np.int64)[None, :]}
    for i in range(6):
        for name in ("query", "key", "value", "output"):
            out[f"layer.{i}.attention.{name}.weight"] = rng.standard_normal((d, d), np.float32) * 0.04
            out[f"layer.{i}.attention.{name}.bias"] = rng.standard_normal(d, np.float32) * 0.01
        out[f"layer.{i}.intermediate.weight"] = rng.standard_normal((ff, d), np.float32) * 0.03
        out[f"layer.{i}.output.weight"] = rng.standard_normal((d, ff), np.float32) * 0.03
        out[f"layer.{i}.norm.weight"] = np.ones(d, np.float32)  # untouched LayerNorm: highly compressible
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "model.safetensors"
    tensors = minilm_like(scale=8)
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("spec", ["fpc", "pco", "zstd", "mdl:s=2"])
def test_lossless_packs_unpack_bit_exactly_and_the_file_is_the_code(small, tmp_path, spec):
    src, tensors = small
    result = kc.pack(src, tmp_path / "m.kc", spec)
    assert 8 * (tmp_path / "m.kc").stat().st_size == result.file_bits == result.code_bits + result.overhead_bits
    kc.unpack(tmp_path / "m.kc", tmp_path / "back.safetensors")
    back = load_file(str(tmp_path / "back.safetensors"))
    assert sorted(back) == sorted(tensors)
    for name, x in tensors.items():
        assert back[name].dtype == x.dtype and back[name].tobytes() == x.tobytes()
    in_memory = kc.unpack(tmp_path / "m.kc")
    assert all(in_memory[n].tobytes() == x.tobytes() for n, x in tensors.items())
    # a code that cannot take the int64 position ids sends them through the stated fallback, never drops them
    fallback = {"fpc": ["embeddings.position_ids"], "mdl:s=2": ["embeddings.position_ids"]}.get(spec, [])
    assert result.fallback == fallback


def test_pack_codes_are_scores_codes(small, tmp_path):
    """fpc's pack holds exactly the codes score() counts; the rest is the stated container overhead."""
    src, tensors = small
    result = kc.pack(src, tmp_path / "m.kc", "fpc")
    report = kc.score(str(src), "fpc")
    fallback_bits = sum(8 * t["length"] for t in result.tensors if t["fallback"])
    assert result.code_bits == report.total["fpc"] + fallback_bits
    assert report.excluded("fpc") == ["embeddings.position_ids"]


def test_minilm_sized_pack_overhead_is_below_half_a_per_mille(tmp_path):
    tensors = minilm_like()
    result = kc.pack(tensors, tmp_path / "m.kc", "fpc")
    assert result.numel > 22_000_000
    assert result.overhead_bits / result.file_bits <= 0.0005
    back = kc.unpack(tmp_path / "m.kc")
    assert all(back[n].tobytes() == x.tobytes() for n, x in tensors.items())


@pytest.mark.parametrize("spec", ["quant:rel=0.1", "quant:delta=0.002"])
def test_lossy_packs_unpack_within_their_bound_and_carry_their_distortion(small, tmp_path, spec):
    src, tensors = small
    result = kc.pack(src, tmp_path / "m.kc", spec)
    back = kc.unpack(tmp_path / "m.kc")
    index = {t["name"]: t for t in read_index(tmp_path / "m.kc").tensors}
    for name, x in tensors.items():
        err = np.abs(back[name].astype(np.float64) - x.astype(np.float64))
        entry = index[name]
        assert err.max() == pytest.approx(entry["max_abs_err"], abs=1e-12)
        assert float((err ** 2).mean()) == pytest.approx(entry["mse"], rel=1e-9, abs=1e-18)
        if x.dtype.kind == "f" and spec.endswith("delta=0.002"):
            assert err.max() <= 0.001 + 1e-7  # step / 2, plus the rounding of the decoded value to float32
        if x.dtype.kind == "i":
            assert err.max() == 0
    assert "mse" in result.summary()


def test_bfloat16_and_bool_tensors_round_trip(tmp_path):
    w = torch.randn(33, 17).to(torch.bfloat16)
    mask = torch.arange(40) % 3 == 0
    from safetensors.torch import save_file as save_torch

    save_torch({"w": w, "mask": mask}, str(tmp_path / "m.safetensors"))
    for spec in ("fpc", "pco", "zstd"):
        out = tmp_path / f"{spec}.kc"
        kc.pack(tmp_path / "m.safetensors", out, spec)
        back = kc.unpack(out)
        assert torch.equal(back["w"].view(torch.int16), w.view(torch.int16))
        assert (back["mask"] == mask.numpy()).all() and back["mask"].dtype == np.bool_


def test_jobs_give_the_same_file(small, tmp_path):
    src, _ = small
    kc.pack(src, tmp_path / "one.kc", "fpc", jobs=1)
    kc.pack(src, tmp_path / "two.kc", "fpc", jobs=2)
    assert (tmp_path / "one.kc").read_bytes() == (tmp_path / "two.kc").read_bytes()


def test_bad_input_changes_nothing(small, tmp_path):
    src, _ = small
    packed = tmp_path / "m.kc"
    kc.pack(src, packed, "fpc")
    good = packed.read_bytes()
    before = src.read_bytes()
    with pytest.raises(PackExistsError):
        kc.pack(src, packed, "fpc")
    with pytest.raises(OutputIsInputError):
        kc.pack(src, src, "fpc", overwrite=True)
    with pytest.raises(OutputIsInputError):
        kc.unpack(packed, packed, overwrite=True)
    assert packed.read_bytes() == good and src.read_bytes() == before
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(PackExistsError):
        kc.unpack(packed, existing)
    assert existing.read_bytes() == b"mine"
    index = read_index(packed)
    first = index.tensors[0]
    damaged = bytearray(good)
    damaged[first["offset"] + first["length"] // 2] ^= 0xFF
    cases = {"truncated": good[: len(good) // 2], "foreign": b"PK\x03\x04" + good[4:], "damaged code": bytes(damaged),
             "damaged index": good[:-20] + b"\xff" * 12 + good[-8:], "empty": b""}
    for label, data in cases.items():
        bad = tmp_path / f"{label}.kc"
        bad.write_bytes(data)
        out = tmp_path / f"{label}.safetensors"
        with pytest.raises(CorruptFileError):
            kc.unpack(bad, out)
        assert not out.exists(), label  # nothing half-written is left
    with pytest.raises(KComplexityError, match="not one codec"):
        kc.pack(src, tmp_path / "x.kc", "lzma")


def test_cli_pack_and_unpack(small, tmp_path):
    src, tensors = small
    run = lambda *a: subprocess.run([sys.executable, "-m", "kcomplexity", *a], capture_output=True, text=True)
    res = run("pack", str(src), "-e", "fpc", "-o", str(tmp_path / "m.kc"))
    assert res.returncode == 0 and "bits/param" in res.stdout and "zstd" in res.stdout
    res = run("unpack", str(tmp_path / "m.kc"), "-o", str(tmp_path / "back.safetensors"))
    assert res.returncode == 0
    assert load_file(str(tmp_path / "back.safetensors"))["layer.0.output.weight"].tobytes() == \
        tensors["layer.0.output.weight"].tobytes()
    res = run("unpack", str(src), "-o", str(tmp_path / "x.safetensors"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = run("pack", str(src), "-o", str(tmp_path / "m.kc"))
    assert res.returncode == 2 and "--overwrite" in res.stderr
