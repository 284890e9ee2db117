"""What we write, we can read; what we read, we check first.

Every code round-trips over constant tensors, edge shapes and names a format reserves; pack indexes are
checked (checksum, exact types, a size bounded by the file); decoders allocate by the output the header names,
never by what the payload claims, and refuse codes of another dtype instead of casting them.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import zstandard

import kcomplexity as kc
from kcomplexity import codecs
from kcomplexity.cli import main
from kcomplexity.codecs import mosaic as mosaic_code
from kcomplexity.codecs.bits import varint, zigzag
from kcomplexity.codecs.container import Header
from kcomplexity.errors import CorruptFileError, EmptyTensorError
from kcomplexity.fileio import OutputExistsError, atomic_writer
from kcomplexity.pack import MAGIC, PackExistsError, codec_for, pack, read_index, unpack
from kcomplexity.sources import NamedArray, Source

SPECS = ["fpc", "zstd", "pco", "mdl:s=2", "mdl:s=3", "quant:rel=0.1", "quant:delta=0.5", "tcq:rel=0.1"]
SHAPES = [(4096, 8), (1,), (), (1, 1), (7,), (3, 5, 7)]
EMPTY = [(0,), (0, 5), (3, 0, 2)]


def _tensor(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "constant":
        return np.full(shape, 0.37, np.float32)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ 1. round trips
@pytest.mark.parametrize("spec", SPECS)
def test_every_code_reads_back_constant_tensors_and_edge_shapes(spec):
    codec = codec_for(spec)
    for shape in SHAPES:
        for kind in ("zeros", "constant", "random"):
            x = _tensor(kind, shape)
            back = codecs.decode(codec.encode(x))
            assert back.shape == x.shape, (spec, shape, kind)  # a 0-d tensor stays 0-d
            if codec.lossless:
                assert back.data.tobytes() == x.tobytes(), (spec, shape, kind)
    for shape in EMPTY:  # an empty tensor: a code that holds one reads it back, the others say so
        x = np.zeros(shape, np.float32)
        try:
            data = codec.encode(x)
        except EmptyTensorError:
            continue
        assert codecs.decode(data).shape == shape


def test_a_constant_mosaic_of_any_size_decodes():
    zeros = np.zeros((4096, 8), np.float32)  # a zero-initialised LoRA B: one motif, 0 bits an index
    code = kc.mdl(zeros, s=2)
    assert np.array_equal(kc.estimators.mdl.decode(code.encode()), zeros.reshape(-1))
    big = np.zeros(1 << 20, np.float32)
    assert np.array_equal(kc.estimators.mdl.decode(kc.mdl(big, s=2).encode()), big)


def test_pack_unpack_constant_and_empty_tensors_and_a_scalar(tmp_path):
    torch = pytest.importorskip("torch")
    src = tmp_path / "w.pt"
    state = {"lora_B": torch.zeros(4096, 8), "empty": torch.zeros(0, 4), "count": torch.tensor(7),
             "scale": torch.tensor(-2.66), "w": torch.randn(16, 4)}
    torch.save(state, src)
    for spec in ("mdl:s=2", "fpc", "quant:rel=0.1"):
        out, back = tmp_path / f"{spec[:3]}.kc", tmp_path / f"{spec[:3]}.safetensors"
        assert main(["pack", str(src), "-e", spec, "-o", str(out)]) == 0
        assert main(["unpack", str(out), "-o", str(back)]) == 0
        from safetensors.torch import load_file

        got = load_file(str(back))
        assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in state.items()}
        assert torch.equal(got["lora_B"], state["lora_B"]) and torch.equal(got["count"], state["count"])
    assert [t["name"] for t in read_index(tmp_path / "fpc.kc").tensors if t["fallback"]] == ["empty", "count"]


def test_a_reserved_name_is_refused_by_the_safetensors_writer_and_kept_by_the_api(tmp_path, capsys):
    src = tmp_path / "w.npz"
    np.savez(src, __metadata__=np.ones(3, np.float32), w=np.arange(4, dtype=np.float32))
    assert main(["pack", str(src), "-o", str(tmp_path / "p.kc")]) == 0
    assert main(["unpack", str(tmp_path / "p.kc"), "-o", str(tmp_path / "out.safetensors")]) == 2
    assert "__metadata__" in capsys.readouterr().err and not (tmp_path / "out.safetensors").exists()
    back = unpack(tmp_path / "p.kc")
    assert np.array_equal(back["__metadata__"], np.ones(3, np.float32))


# ------------------------------------------------------------------ 2. no-replace publishing
def test_a_file_that_appears_while_a_pack_runs_is_kept(tmp_path):
    out = tmp_path / "out.kc"

    def tensors():  # the user (or a second pack) creates the output while this pack is coding
        out.write_bytes(b"theirs")
        yield "w", np.ones(64, np.float32)

    with pytest.raises(PackExistsError, match="appeared while"):
        pack(Source(["w"], tensors, False, "arrays"), out)
    assert out.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["out.kc"]
    pack(Source(["w"], lambda: iter([("w", np.ones(64, np.float32))]), False, "arrays"), out, overwrite=True)
    assert read_index(out).names() == ["w"]


def test_atomic_writer_without_replace_never_replaces(tmp_path):
    target = tmp_path / "t"
    with atomic_writer(target, replace=False) as fh:
        fh.write(b"ours")
    assert target.read_bytes() == b"ours"
    with pytest.raises(OutputExistsError):
        with atomic_writer(target, replace=False) as fh:
            fh.write(b"second")
    assert target.read_bytes() == b"ours" and len(list(tmp_path.iterdir())) == 1


# ------------------------------------------------------------------ 4. the pack index
def _rewrite_index(path, edit, checksum=True, raw=None):
    """Replace a pack's index by ``edit(index)`` (or by ``raw`` JSON bytes), framing kept consistent."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[-8:])
    start = len(data) - 8 - length
    if raw is None:
        index = json.loads(zstandard.ZstdDecompressor().decompress(data[start:-8]))
    text = raw if raw is not None else json.dumps(edit(index)).encode()
    new = zstandard.ZstdCompressor(write_checksum=checksum).compress(text)
    path.write_bytes(data[:start] + new + struct.pack("<Q", len(new)))


@pytest.fixture
def packed(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, flag=np.arange(6, dtype=np.float32), other=np.ones((2, 3), np.float32))
    out = tmp_path / "p.kc"
    pack(src, out)
    return out


def _entry(key, value):
    def edit(index):
        if value is KeyError:
            del index["tensors"][0][key]
        else:
            index["tensors"][0][key] = value
        return index
    return edit


@pytest.mark.parametrize("edit", [_entry("codec", KeyError), _entry("offset", 5.0), _entry("numel", 6.0),
                                  _entry("shape", [6.0]), _entry("fallback", 0), _entry("crc32", True),
                                  _entry("name", 5), _entry("dtype", ["float32"]),
                                  lambda index: {**index, "codec": None}])
def test_an_index_field_of_the_wrong_type_is_a_damaged_pack(packed, tmp_path, edit, capsys):
    _rewrite_index(packed, edit)
    with pytest.raises(CorruptFileError, match="damaged pack index"):
        read_index(packed)
    assert main(["unpack", str(packed), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "damaged pack index" in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()


def test_a_flipped_bit_in_the_index_is_caught_by_its_checksum(packed):
    data = bytearray(packed.read_bytes())
    original = read_index(packed).tensors
    (length,) = struct.unpack("<Q", data[-8:])
    start = len(data) - 8 - length
    caught = 0
    for i in range(start, len(data) - 8):
        for bit in (0, 5):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            packed.write_bytes(damaged)
            try:
                tensors = read_index(packed).tensors
            except CorruptFileError:
                caught += 1
                continue
            assert tensors == original  # a flip that survives (a frame flag no reader uses) changed nothing read
    assert caught >= 0.95 * 2 * length


def test_an_index_without_its_checksum_deeply_nested_or_inflating_past_the_file_is_refused(packed):
    _rewrite_index(packed, lambda index: index, checksum=False)
    with pytest.raises(CorruptFileError):
        read_index(packed)
    _rewrite_index(packed, None, raw=b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptFileError):
        read_index(packed)
    _rewrite_index(packed, None, raw=b" " * (200 << 20))  # 200 MiB of blanks in a file of a few kB
    with pytest.raises(CorruptFileError):
        read_index(packed)


# ------------------------------------------------------------------ 5. decoders allocate by the output
def test_a_zstd_code_of_an_empty_tensor_cannot_inflate():
    bomb = Header("zstd", 1, "float32", (0,)).to_bytes() + zstandard.ZstdCompressor().compress(bytes(50 << 20))
    with pytest.raises(CorruptFileError, match="more than the 0 bytes"):
        codecs.decode(bomb)
    empty = codecs.ZstdCodec().encode(np.zeros(0, np.float32))
    assert codecs.decode(empty).shape == (0,)


def test_a_pco_code_is_checked_against_its_header_before_it_is_inflated():
    import pcodec

    stream = pcodec.standalone.simple_compress(np.zeros(1 << 20, np.float32), pcodec.ChunkConfig())
    with pytest.raises(CorruptFileError, match="do not fill"):
        codecs.decode(Header("pco", 1, "float32", (10,)).to_bytes() + stream)
    no_chunks = pcodec.standalone.simple_compress(np.zeros(0, np.float32), pcodec.ChunkConfig())
    assert codecs.decode(Header("pco", 1, "float32", (0,)).to_bytes() + no_chunks).shape == (0,)
    with pytest.raises(CorruptFileError):
        codecs.decode(Header("pco", 1, "float32", (3,)).to_bytes() + no_chunks)


def _retyped(code: bytes, dtype: str) -> bytes:
    from kcomplexity.codecs.container import DTYPES

    return code[:4] + bytes([DTYPES.index(dtype)]) + code[5:]


@pytest.mark.parametrize("spec,src,dtype,scale", [
    ("quant:rel=0.1", "float32", "int32", 1), ("quant:rel=0.1", "float32", "bool", 1),
    ("quant:rel=0.1", "float32", "float16", 1e5), ("tcq:rel=0.1", "float32", "float16", 1e5),
    ("fpc", "float32", "float16", 1), ("fpc", "float32", "bfloat16", 1), ("pco", "int16", "int8", 1000),
    ("pco", "float32", "float64", 1), ("tcq:rel=0.1", "float32", "int16", 1), ("mdl:s=2", "float32", "float16", 1),
    ("quant:rel=0.1", "int32", "int8", 1000)])
def test_a_code_retyped_to_another_dtype_is_refused_not_cast(spec, src, dtype, scale):
    x = (np.random.default_rng(0).standard_normal(300) * scale).astype(src)
    code = codec_for(spec).encode(x)
    with pytest.raises(CorruptFileError):
        codecs.decode(_retyped(code, dtype))


def test_quant_holds_integer_tensors_to_step_one():
    code = kc.encode_quantized(np.arange(10, dtype=np.int32), rel=0.1)
    pos = 5 + 2  # container, ndim, dim, then method
    stepped = code[:pos + 1] + struct.pack("<d", 0.5) + code[pos + 9:]
    with pytest.raises(CorruptFileError, match="step 1"):
        codecs.decode(stepped)


def test_a_constant_tcq_code_decodes_in_compact_memory():
    import resource

    n = 1 << 24
    from kcomplexity.codecs import tcq

    code = Header("tcq", 1, "float32", (n,)).to_bytes() + struct.pack("<d", 0.01) + varint(256) + varint(1)
    code += varint(zigzag(3)) + varint(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tcq.decode_tcq(code)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    # 2q d under Q0 and (2q - 1) d under Q1
    assert out.shape == (n,) and set(np.unique(out).tolist()) <= {float(np.float32(0.06)), float(np.float32(0.05))}
    assert grown < 4 * out.nbytes  # int32 offsets and int8 quantisers: the int64 arrays took 7x more


def test_tcq_with_one_far_outlier_falls_back_to_quant_on_the_same_step(tmp_path):
    x = np.random.default_rng(0).standard_normal(256).astype(np.float32) * 0.01
    x[7] = 1e4  # at delta 1e-3: five million levels, more than the context tables hold
    code = codec_for("tcq:delta=0.001").encode(x)
    assert codecs.codec_of(code) == "quant"
    back = codecs.decode(code).data
    assert np.abs(back - x).max() <= 0.0005 + 1e-3  # within step / 2 (plus float32 rounding at 1e4)
    np.save(tmp_path / "w.npy", x)
    assert main(["score", str(tmp_path / "w.npy"), "-e", "tcq:delta=0.001", "-q"]) == 0
    assert main(["pack", str(tmp_path / "w.npy"), "-e", "tcq:delta=0.001", "-o", str(tmp_path / "w.kc")]) == 0
    assert main(["rd", str(tmp_path / "w.npy"), "--trellis", "--rel", "1e-5"]) == 0


# ------------------------------------------------------------------ 7. valid input must not crash
@pytest.mark.parametrize("values", [[-2.66], [-3.0, -2.5, -2.9, -2.7], [4.0, 5.0, 4.5]])
def test_rdoq_on_levels_all_of_one_sign(values, tmp_path):
    x = np.array(values, np.float32)
    code = codec_for("quant:rel=0.1:rdoq=0.1").encode(x)
    assert np.abs(codecs.decode(code).data - x).max() <= 1.5 * 0.1 * np.sqrt(np.mean(x.astype(np.float64) ** 2))
    np.savez(tmp_path / "w.npz", logit_scale=x)
    assert main(["score", str(tmp_path / "w.npz"), "-e", "quant:rel=0.1:rdoq=0.1", "-q"]) == 0
    assert main(["rd", str(tmp_path / "w.npz"), "--rdoq", "0.1", "--rel", "0.1"]) == 0


def test_an_mse_target_of_zero_is_named_as_a_target(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.ones(8, np.float32))
    assert main(["rd", str(tmp_path / "w.npy"), "--mse", "0"]) == 2
    err = capsys.readouterr().err
    assert "MSE target must be a finite number > 0" in err and "delta" not in err


def test_mosaic_decoder_limit_is_what_it_is_told():
    code = codec_for("mdl:s=2").encode(np.zeros(1 << 16, np.float32))
    assert codecs.decode(code, max_values=1 << 16).numel == 1 << 16
    with pytest.raises(CorruptFileError, match="max_values"):
        codecs.decode(code, max_values=1000)
    with pytest.raises(CorruptFileError):
        mosaic_code.decode(code[6 + 3:], max_values=1000)


def test_the_writer_never_emits_an_index_the_reader_refuses(tmp_path):
    big_names = [NamedArray("n" * 100_000 + str(i), np.zeros(1, np.float32), "float32") for i in range(3)]
    pack(big_names, tmp_path / "ok.kc")  # 300 kB of names in a 300 kB-index file: within the bound
    assert len(read_index(tmp_path / "ok.kc").tensors) == 3
    assert zlib.crc32(b"") == 0 and MAGIC == b"KCPK"
