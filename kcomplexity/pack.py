"""One file per checkpoint: every tensor's code, framed, with an index (``kc.pack`` / ``kc.unpack``).

Layout::

    b"KCPK" version
    code of tensor 1 | code of tensor 2 | ...      (each a container code: it names its own codec,
                                                   dtype and shape, so each decodes on its own)
    index (zstd of JSON)                           names, dtypes, shapes, codec per tensor, framing
                                                   (offset, length, CRC-32), distortion of lossy codes;
                                                   version 2: the zstd frame carries a checksum of the JSON
    index length (uint64 little-endian)

The index comes last so a checkpoint of any size is written in one
streaming pass, one tensor in memory at a time; a reader finds it from the
last 8 bytes. ``8 * file size`` = the codes' bits + the container overhead
(magic, version, index, its length), which :class:`PackResult` reports.

Tensors the chosen code cannot take (integers and bool for ``fpc``, say,
and empty tensors for every code but zstd) are coded by the general
lossless code (zstd of their bytes) and the index says so: a pack never
leaves a tensor out.

The reader trusts nothing the file says before checking it: the index's
checksum (version 2), every field's exact JSON type, framing that tiles the
file, and an inflated index bounded by the file's own size
(:func:`index_limit`), a bound the writer keeps too.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import workers
from .codecs import Codec, FpcCodec, MosaicCodec, PcoCodec, QuantCodec, TcqCodec, ZstdCodec, decode, zstd_decompress
from .codecs.container import MAX_VALUES, NUMPY
from .distortion import combine
from .errors import CorruptFileError, EstimatorSettingError, KComplexityError
from .fileio import OutputExistsError, atomic_writer, open_regular
from .sources import NamedArray, open_source, read_safetensors_tensor, refuse_output_onto

MAGIC = b"KCPK"
#: version 2 adds the index checksum; version 1 files (no checksum) are still read
VERSION = 2
VERSIONS = (1, 2)
FORMAT = "kcomplexity-pack"
#: the general lossless code of tensors the chosen code cannot take
FALLBACK = ZstdCodec(level=19)
#: the most a pack's index may hold: far beyond any checkpoint's names and shapes, far below memory
MAX_INDEX_BYTES = 256 << 20
#: an index inflates to at most this many times the file holding it, plus INDEX_BASE bytes
INDEX_EXPANSION, INDEX_BASE = 64, 1 << 20
#: names a safetensors file reserves: its header's metadata entry
RESERVED_NAMES = ("__metadata__",)
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int8": "I8",
                      "int16": "I16", "int32": "I32", "int64": "I64", "uint8": "U8", "uint16": "U16",
                      "uint32": "U32", "uint64": "U64", "bool": "BOOL"}


class PackExistsError(OutputExistsError):
    """The output exists and ``overwrite`` was not given."""


def index_limit(file_size: int) -> int:
    """The most bytes a pack's index may inflate to in a file of ``file_size`` bytes.

    A real index holds about 150 bytes a tensor, and each tensor's code takes
    at least a few bytes of the file, so 64 times the file is far beyond any
    checkpoint and still bounds what a damaged or hostile index can cost."""
    return min(MAX_INDEX_BYTES, INDEX_BASE + INDEX_EXPANSION * int(file_size))


@dataclass
class PackResult:
    """What a pack holds and what it costs, in bits."""

    path: str
    spec: str
    code_bits: int                  #: the tensors' codes together
    file_bits: int                  #: 8 x the file's size
    numel: int
    tensors: list[dict[str, Any]] = field(repr=False)

    @property
    def overhead_bits(self) -> int:
        """Magic, version, index and its length: the container, beyond the codes."""
        return self.file_bits - self.code_bits

    @property
    def fallback(self) -> list[str]:
        """Tensors the chosen code could not take, coded by the general lossless code."""
        return [t["name"] for t in self.tensors if t["fallback"]]

    def summary(self) -> str:
        line = (f"{self.path}: {len(self.tensors)} tensors, {self.numel:,} parameters, {self.spec}; "
                f"{self.code_bits:,} bits of codes + {self.overhead_bits:,} of container "
                f"({100 * self.overhead_bits / self.file_bits:.3f} %) = {self.file_bits // 8:,} bytes, "
                f"{self.code_bits / max(self.numel, 1):.4g} bits/param")
        lossy = [t for t in self.tensors if "mse" in t]
        if lossy:
            d = combine(lossy, [t["numel"] for t in lossy])
            line += f"; mse {d['mse']:.4g}, max error {d['max_abs_err']:.4g}"
        if self.fallback:
            line += f"; {len(self.fallback)} tensor(s) the code cannot take went through {FALLBACK.spec()}"
        return line


def codec_for(spec: Any) -> Codec:
    """The codec behind an estimator spec: ``fpc``, ``pco[:level=L]``, ``zstd[:level=L]``, ``mdl[:s=S]`` or
    ``quant``/``tcq[:rel=R | :delta=D]`` (EstimatorSettingError for estimators that are not one codec)."""
    from .estimators.base import get

    est = get(spec)
    settings = est.settings()
    if est.name == "fpc":
        return FpcCodec()
    if est.name == "quant":
        return QuantCodec(**settings)
    if est.name == "tcq":
        return TcqCodec(**settings)
    if est.name == "zstd":
        return ZstdCodec(settings["level"])
    if est.name == "pco":
        return PcoCodec(settings["level"])
    if est.name == "mdl" and settings["q"] is None:
        return MosaicCodec(settings["s"])
    raise EstimatorSettingError(f"'{spec}' is not one codec of a tensor; pack codes with fpc, pco, zstd, mdl (without "
                                "q), quant or tcq")


def pack(source: Any, path: str | os.PathLike, estimator: str = "fpc", overwrite: bool = False, jobs: int = 1,
         include_buffers: bool = False, allow_nonfinite: bool = False) -> PackResult:
    """Code every tensor of ``source`` with ``estimator`` (``fpc``, ``pco``, ``zstd``, ``mdl:s=S``,
    ``quant:rel=R``, ``quant:delta=D`` or the same of ``tcq``) into one file at ``path``; returns what it holds, in bits.

    Tensors are read, coded and written one at a time (``jobs`` at once in
    worker processes), so memory stays near the largest tensor. The file
    appears only when complete; an existing one is replaced only with
    ``overwrite=True``, and never when it is one of the inputs.
    """
    import zstandard

    from .scoring import MAX_JOBS, _in_order

    codec = codec_for(estimator)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise EstimatorSettingError(f"jobs must be a whole number in 1..{MAX_JOBS}, got {jobs!r}")
    _check_output(path, overwrite, source)
    src = open_source(source, include_buffers=include_buffers, allow_nonfinite=allow_nonfinite)
    src.allow_empty = True  # an empty tensor is still part of the checkpoint
    entries: list[dict[str, Any]] = []
    with _publishing(path, overwrite) as fh:
        fh.write(MAGIC + bytes([VERSION]))
        offset = len(MAGIC) + 1
        if jobs == 1:
            coded: Iterator[tuple[dict[str, Any], bytes]] = (_code(codec, a) for a in src)
        else:
            coded = _coded_in_workers(src, codec, jobs, _in_order)
        for entry, data in coded:
            fh.write(data)
            entries.append({**entry, "offset": offset, "length": len(data), "crc32": zlib.crc32(data)})
            offset += len(data)
        text = json.dumps({"format": FORMAT, "version": VERSION, "codec": codec.spec(), "fallback": FALLBACK.spec(),
                           "tensors": entries}, separators=(",", ":")).encode()
        index = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(text)
        size = offset + len(index) + 8
        if len(text) > index_limit(size):  # what the reader would refuse, the writer never writes
            raise KComplexityError(f"the tensors' names make an index of {len(text):,} bytes, more than a pack of "
                                   f"{size:,} bytes may hold ({index_limit(size):,})")
        fh.write(index + struct.pack("<Q", len(index)))
    return PackResult(os.fspath(path), codec.spec(), sum(8 * e["length"] for e in entries), 8 * size,
                      sum(e["numel"] for e in entries), entries)


def _code(codec: Codec, a: NamedArray) -> tuple[dict[str, Any], bytes]:
    """(index entry without framing, code) of one tensor: the chosen code, or the fallback if it cannot."""
    use = codec if codec.takes(a.dtype) and (a.numel or codec is FALLBACK) else FALLBACK
    data, distortion = use.encode_measured(a)
    entry: dict[str, Any] = {"name": a.name, "dtype": a.dtype, "shape": list(a.shape), "numel": a.numel,
                             "codec": use.spec(), "fallback": use is not codec, **(distortion or {})}
    return entry, data


def _read_and_code(path: str, name: str, allow_nonfinite: bool, codec: Codec) -> tuple[dict[str, Any], bytes]:
    return _code(codec, read_safetensors_tensor(path, name, allow_nonfinite, allow_empty=True))


def _coded_in_workers(src: Any, codec: Codec, jobs: int, in_order: Any) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Codes of every tensor in order, ``jobs`` worker processes coding (and reading, for safetensors files)."""
    with workers.pool(jobs, False) as pool:
        if src.files is not None:
            calls = ((None, (_read_and_code, f, n, src.allow_nonfinite, codec)) for n, f in zip(src.names, src.files))
        else:
            calls = ((None, (_code, codec, a)) for a in src)
        for _, result in in_order(pool, calls, 2 * jobs):
            yield result


def _check_output(path: str | os.PathLike, overwrite: bool, *inputs: Any) -> None:
    """Refuse an existing output early (before any work); :func:`_publishing` holds the rule to the end."""
    if os.path.lexists(path) and not overwrite:
        raise PackExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    refuse_output_onto(path, *inputs)


@contextmanager
def _publishing(path: str | os.PathLike, overwrite: bool) -> Iterator[Any]:
    """:func:`atomic_writer` that, without ``overwrite``, publishes with a no-replace link: a file that appeared
    at ``path`` while we wrote (a second pack, a user) is kept and PackExistsError is raised."""
    try:
        with atomic_writer(path, replace=overwrite) as fh:
            yield fh
    except OutputExistsError as exc:
        if isinstance(exc, PackExistsError):
            raise
        raise PackExistsError(str(exc)) from None


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Packed:
    """The index of a pack file."""

    path: str
    codec: str
    tensors: list[dict[str, Any]]
    size: int

    def names(self) -> list[str]:
        return [t["name"] for t in self.tensors]


def read_index(path: str | os.PathLike) -> Packed:
    """The index of a pack file (CorruptFileError for a damaged, truncated or foreign file)."""
    fd = open_regular(path, "pack file")
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if fh.read(len(MAGIC)) != MAGIC:
            raise CorruptFileError(f"{path} is not a kcomplexity pack (bad magic)")
        version = fh.read(1)
        if not version or version[0] not in VERSIONS:
            raise CorruptFileError(f"{path}: pack version {version[0] if version else '?'} is not one this "
                                   f"reader knows ({', '.join(map(str, VERSIONS))})")
        if size < len(MAGIC) + 1 + 8:
            raise CorruptFileError(f"{path} is truncated")
        fh.seek(size - 8)
        (length,) = struct.unpack("<Q", fh.read(8))
        start = size - 8 - length
        if length > MAX_INDEX_BYTES or start < len(MAGIC) + 1:
            raise CorruptFileError(f"{path} is truncated or damaged (its index does not fit in the file)")
        fh.seek(start)
        raw = fh.read(length)
    index = _parse_index(raw, version[0], index_limit(size), start)
    if index is None:
        raise CorruptFileError(f"{path}: damaged pack index")
    return Packed(os.fspath(path), index["codec"], index["tensors"], size)


def _parse_index(raw: bytes, version: int, limit: int, end_of_codes: int) -> dict[str, Any] | None:
    """The index's JSON if every field has its exact type and the framing tiles the file up to the index."""
    import zstandard

    try:
        if version >= 2 and not zstandard.get_frame_parameters(raw).has_checksum:
            return None
        index = json.loads(zstd_decompress(raw, limit, "pack index"))
    except (ValueError, RecursionError, zstandard.ZstdError, CorruptFileError):
        return None
    if not (_exact(index, dict) and index.get("format") == FORMAT and _exact(index.get("codec"), str)
            and _exact(index.get("tensors"), list)):
        return None
    end = len(MAGIC) + 1
    for t in index["tensors"]:
        if not _valid_entry(t, end):
            return None
        end = t["offset"] + t["length"]
    if end != end_of_codes or len({t["name"] for t in index["tensors"]}) != len(index["tensors"]):
        return None
    return index


def _exact(value: Any, kind: type) -> bool:
    """``value`` is exactly of JSON type ``kind`` (an int is not a bool, a float not an int)."""
    return type(value) is kind


def _valid_entry(t: Any, offset: int) -> bool:
    """One tensor's index entry: exact types, a known dtype, numel the product of its shape, framed at ``offset``."""
    if not _exact(t, dict):
        return False
    ints = ("numel", "offset", "length", "crc32")
    if not (all(_exact(t.get(k), int) for k in ints) and _exact(t.get("name"), str) and _exact(t.get("codec"), str)
            and _exact(t.get("fallback"), bool) and _exact(t.get("shape"), list)
            and _exact(t.get("dtype"), str) and t["dtype"] in SAFETENSORS_DTYPES):
        return False
    if not all(_exact(d, int) and d >= 0 for d in t["shape"]) or len(t["shape"]) > 64:
        return False
    distortion = [t[k] for k in ("mse", "max_abs_err") if k in t]
    if not all(type(v) in (int, float) for v in distortion):
        return False
    return (t["offset"] == offset and t["length"] > 0 and 0 <= t["crc32"] < 1 << 32
            and math.prod(t["shape"]) == t["numel"])


def iter_unpacked(path: str | os.PathLike, max_values: int = MAX_VALUES) -> Iterator[NamedArray]:
    """Each tensor of a pack, decoded, in order (one in memory at a time)."""
    packed = read_index(path)
    fd = open_regular(path, "pack file")
    with os.fdopen(fd, "rb") as fh:
        for t in packed.tensors:
            fh.seek(t["offset"])
            data = fh.read(t["length"])
            if zlib.crc32(data) != t["crc32"]:  # raw sections (low mantissa bits) decode to anything: check first
                raise CorruptFileError(f"{path}: tensor '{t['name']}' is damaged (checksum mismatch)")
            a = decode(data, max_values)
            if a.dtype != t["dtype"] or list(a.shape) != t["shape"]:
                raise CorruptFileError(f"{path}: tensor '{t['name']}' does not match its index entry")
            yield NamedArray(t["name"], a.data, a.dtype)


def unpack(path: str | os.PathLike, output: str | os.PathLike | None = None, overwrite: bool = False,
           max_values: int = MAX_VALUES) -> dict[str, Any] | Packed:
    """A pack back to tensors: with ``output``, streamed into a safetensors file (returns the index); without,
    a dict of numpy arrays (bfloat16 as a torch tensor)."""
    if output is None:
        return {a.name: _array(a) for a in iter_unpacked(path, max_values)}
    _check_output(output, overwrite, path)
    packed = read_index(path)
    reserved = [t["name"] for t in packed.tensors if t["name"] in RESERVED_NAMES]
    if reserved:
        raise KComplexityError(f"{path} holds a tensor named {reserved[0]!r}, a name safetensors reserves for its "
                               "metadata; read it with kcomplexity.unpack(path) (no output), which returns every "
                               "tensor by name")
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "packed_with": packed.codec}}
    pos = 0
    for t in packed.tensors:
        nbytes = t["numel"] * np.dtype(NUMPY.get(t["dtype"], t["dtype"])).itemsize
        header[t["name"]] = {"dtype": SAFETENSORS_DTYPES[t["dtype"]], "shape": t["shape"],
                             "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with _publishing(output, overwrite) as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        for a in iter_unpacked(path, max_values):
            fh.write(np.ascontiguousarray(a.data).tobytes())
    return packed


def _array(a: NamedArray) -> Any:
    if a.dtype == "bfloat16":
        import torch

        return torch.from_numpy(a.data.view(np.int16).copy()).view(torch.bfloat16)
    return a.data


__all__ = ["pack", "unpack", "codec_for", "read_index", "iter_unpacked", "index_limit", "PackResult", "Packed",
           "PackExistsError"]
