"""A float-aware lossless code (``fpc``): sign, exponent and top mantissa bits entropy-coded, the rest raw.

Each value's bit pattern is split into a *head* — sign, exponent and the
top ``h`` mantissa bits, a coarse sign-and-log-magnitude — and the remaining
low mantissa bits. Trained weights are smooth in log-magnitude, so the heads
carry the little structure there is (about 2.5 bits of exponent entropy
instead of 8), while the low bits are close to uniform and are written raw.
Two kinds of side information sharpen the model at almost no cost:

* per row, the number of trailing mantissa bits that are zero in every
  value (rows stored at lower precision — e.g. untouched float16
  initialisations inside a float32 embedding — drop those bits);
* for large matrices, a class per row by its mean head (a proxy of the
  row's scale), so rows of different scale get their own head histogram.

Head histograms (counts, zstd-packed) are sent, then the heads of every
class go through one ANS stream (``constriction``). The code is exact bit
for bit: -0.0, subnormals, inf and NaN payloads survive, since only bit
fields are moved. Supported: float32, float16 and bfloat16 (bfloat16 as a
torch tensor, or a :class:`~kcomplexity.sources.NamedArray` of its 16-bit
patterns).

Layout: the container header (:mod:`kcomplexity.codecs.container`), then
sections (varint length + bytes): row info (zstd of tz and class per row),
head tables (:func:`~kcomplexity.codecs.bits.pack_tables`), ANS words, raw
low bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptFileError, NotApplicableError
from ..sources import NamedArray, array_and_dtype
from . import ans
from .bits import bincount, pack_fixed, pack_tables, packed_size, read_varint, unpack_fixed, unpack_tables, varint
from .container import MAX_NDIM, MAX_VALUES, Header, read_header

VERSION = 1


@dataclass(frozen=True)
class _Format:
    name: str
    exponent: int      #: exponent bits
    mantissa: int      #: mantissa bits
    head: int          #: mantissa bits kept in the head symbol
    uint: Any

    @property
    def width(self) -> int:
        return 1 + self.exponent + self.mantissa


FORMATS = {f.name: f for f in (_Format("float32", 8, 23, 3, np.uint32), _Format("float16", 5, 10, 4, np.uint16),
                                _Format("bfloat16", 8, 7, 4, np.uint16))}
#: rows of a matrix get a scale class (own head histogram) per this many values, at most MAX_CLASSES
VALUES_PER_CLASS = 100_000
MAX_CLASSES = 8
MIN_ROWS_FOR_CLASSES = 16


def encode(x: Any) -> bytes:
    """The fpc code of one float32 / float16 / bfloat16 array or tensor; ``len(result) * 8`` bits."""
    data, dtype = array_and_dtype(x)
    fmt = FORMATS.get(dtype)
    if fmt is None:
        raise NotApplicableError(f"fpc codes float32, float16 and bfloat16 tensors, not {dtype}")
    bits = np.ascontiguousarray(data).reshape(-1).view(fmt.uint)
    # the caller's own shape: a 0-d tensor stays 0-d (our array conversion makes it 1-d)
    given = tuple(int(d) for d in getattr(x, "shape", data.shape))
    shape = given if int(np.prod(given, dtype=object)) == bits.size else tuple(data.shape)
    if len(shape) > MAX_NDIM:
        raise NotApplicableError(f"fpc codes tensors of at most {MAX_NDIM} dimensions, not {len(shape)}")
    header = Header("fpc", VERSION, fmt.name, tuple(int(d) for d in shape)).to_bytes()
    if bits.size == 0:
        return header
    rows = _rows(shape)
    u = bits.reshape(rows, -1)
    tz = _row_trailing_zeros(u & fmt.uint((1 << fmt.mantissa) - 1), fmt.mantissa)
    # sign | exponent | top h mantissa bits; below the signed range, so the shifted array is viewed, not copied,
    # as signed integers of its width
    head = (u >> fmt.uint(fmt.mantissa - fmt.head)).view(f"i{np.dtype(fmt.uint).itemsize}")
    cls = _row_classes(head & ((1 << (fmt.exponent + fmt.head)) - 1), tz)
    groups = _class_groups(cls)
    tables, symbols = [], []
    for c, row_idx in groups:
        # one class: the symbols are the heads themselves, shifted in place (working memory ~ the tensor)
        sym = (head if len(groups) == 1 else head[row_idx]).reshape(-1)
        lo = int(sym.min())
        sym -= sym.dtype.type(lo)
        counts = bincount(sym)
        tables.append((c, lo, counts))
        symbols.append((sym, counts))
    del head
    table = pack_tables([a for c, lo, counts in tables for a in (np.array([c, lo]), counts)])
    stream = ans.encode([(ans.categorical(counts), sym, None) for sym, counts in symbols
                         if (counts > 0).sum() > 1])  # a constant head costs nothing in the stream
    del symbols
    low = _pack_low(u, tz, fmt)
    info = _zstd(np.stack([tz, cls]).astype(np.uint8).tobytes())
    return header + b"".join(varint(len(s)) + s for s in (info, table, stream, low))


def decode(data: bytes, max_values: int = MAX_VALUES) -> Any:
    """Inverse of :func:`encode`: a numpy array (float32/float16), or a torch bfloat16 tensor.

    Codes claiming more than ``max_values`` values are refused (CorruptFileError)."""
    head, pos = read_header(data, "fpc", (VERSION,), max_values)
    if head.dtype not in FORMATS:
        raise CorruptFileError(f"corrupt fpc code: dtype {head.dtype}")
    fmt, shape, n = FORMATS[head.dtype], list(head.shape), head.numel
    buf = memoryview(bytes(data))
    if n == 0:
        return _output(np.zeros(0, dtype=fmt.uint), fmt, tuple(shape))
    sections = []
    try:
        for _ in range(4):
            size, pos = read_varint(buf, pos)
            if pos + size > len(buf):
                raise CorruptFileError("corrupt fpc code: truncated")
            sections.append(buf[pos:pos + size])
            pos += size
    except IndexError:
        raise CorruptFileError("corrupt fpc code: truncated header") from None
    rows = _rows(tuple(shape))
    cols = n // rows
    info = np.frombuffer(_unzstd(sections[0], 2 * rows), dtype=np.uint8).reshape(2, rows).astype(np.int64)
    tz, cls = info
    if (tz > fmt.mantissa).any():
        raise CorruptFileError("corrupt fpc code: bad row precision")
    groups = _class_groups(cls)
    flat = unpack_tables(sections[1], 2 * len(groups), 1 << 20, "fpc code")
    if any(flat[i].size != 2 for i in range(0, len(flat), 2)):
        raise CorruptFileError("corrupt fpc code: bad head table")
    tables = [(int(flat[i][0]), int(flat[i][1]), flat[i + 1]) for i in range(0, len(flat), 2)]
    head_symbols = 1 << (1 + fmt.exponent + fmt.head)
    if any(lo < 0 or lo + counts.size > head_symbols for _, lo, counts in tables):
        # a head outside sign|exponent|top mantissa bits of this format: a code of another float type
        raise CorruptFileError(f"corrupt fpc code: head symbols outside {fmt.name}'s")
    # the output's own unsigned type throughout: working memory stays a small multiple of the tensor
    head = np.zeros((rows, cols), dtype=fmt.uint)
    decoded = _ans_decode(sections[2], [(counts, row_idx.size * cols) for (_, _, counts), (_, row_idx) in
                                        zip(tables, groups)])
    for (c, lo, _), (c2, row_idx), sym in zip(tables, groups, decoded):
        if c != c2:
            raise CorruptFileError("corrupt fpc code: class tables out of order")
        sym += np.int32(lo)
        if row_idx.size == rows:
            head[...] = sym.reshape(rows, cols)
        else:
            head[row_idx] = sym.reshape(row_idx.size, cols)
        del sym
    del decoded
    u = _unpack_low(sections[3], head, tz, fmt)
    return _output(u.reshape(-1), fmt, tuple(shape))


def _output(bits: np.ndarray, fmt: _Format, shape: tuple[int, ...]) -> Any:
    if fmt.name == "bfloat16":
        import torch

        return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).reshape(shape)
    return bits.view(fmt.name).reshape(shape)


def _rows(shape: tuple[int, ...]) -> int:
    """Rows of the 2-D view the side information is kept per: the first dimension of a matrix, else one."""
    return int(shape[0]) if len(shape) >= 2 and shape[0] > 0 else 1


def _row_trailing_zeros(mant: np.ndarray, width: int) -> np.ndarray:
    """Per row, the mantissa bits that are zero in every value (``width`` for an all-zero-mantissa row)."""
    orr = np.bitwise_or.reduce(mant, axis=1).astype(np.int64)
    low = orr & -orr
    tz = np.zeros(orr.size, dtype=np.int64)
    nz = low > 0
    tz[nz] = np.log2(low[nz]).round().astype(np.int64)
    tz[~nz] = width
    return tz


def _row_classes(magnitude: np.ndarray, tz: np.ndarray) -> np.ndarray:
    """Class per row: scale bin (quantile of the row's mean log-magnitude head) for large matrices, times
    reduced precision (some trailing mantissa bits always zero)."""
    rows = magnitude.shape[0]
    k = int(np.clip(magnitude.size // VALUES_PER_CLASS, 1, MAX_CLASSES)) if rows >= MIN_ROWS_FOR_CLASSES else 1
    scale = np.zeros(rows, dtype=np.int64)
    if k > 1:
        mean = magnitude.mean(axis=1)
        scale = np.searchsorted(np.quantile(mean, np.linspace(0, 1, k + 1)[1:-1]), mean)
    return scale * 2 + (tz > 0)


def _class_groups(cls: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, its rows in order) for each class present, classes ascending."""
    order = np.argsort(cls, kind="stable")
    values, starts = np.unique(cls[order], return_index=True)
    bounds = list(starts[1:]) + [order.size]
    return [(int(v), order[s:e]) for v, s, e in zip(values, starts, bounds)]


def _ans_decode(section: memoryview, groups: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
    decoder = ans.Decoder(section, "fpc code")
    out = []
    for counts, n in groups:
        used = np.flatnonzero(counts)
        if used.size == 0 or counts.sum() != n:
            raise CorruptFileError("corrupt fpc code: head table does not match the shape")
        if used.size == 1:  # a constant head costs nothing in the stream
            out.append(np.full(n, used[0], dtype=np.int32))
        else:
            out.append(decoder.decode(ans.categorical(counts), n, dtype=np.int32))
    decoder.finish()
    return out


def _low_widths(tz: np.ndarray, fmt: _Format) -> np.ndarray:
    """Raw low mantissa bits per row: below the head, above the row's always-zero bits."""
    return np.maximum(fmt.mantissa - fmt.head - tz, 0)


def _pack_low(u: np.ndarray, tz: np.ndarray, fmt: _Format) -> bytes:
    """Each row's low bits (between the head and its trailing zeros), rows grouped by width, MSB-first planes."""
    widths = _low_widths(tz, fmt)
    parts = []
    for w in np.unique(widths):
        if w == 0:
            continue
        rows = np.flatnonzero(widths == w)
        part = u if rows.size == u.shape[0] else u[rows]
        shift = fmt.mantissa - fmt.head - int(w)
        vals = part >> fmt.uint(shift)
        vals &= fmt.uint((1 << int(w)) - 1)
        parts.append(pack_fixed(vals.reshape(-1), int(w)))
        del vals
    return b"".join(parts)


def _unpack_low(section: memoryview, head: np.ndarray, tz: np.ndarray, fmt: _Format) -> np.ndarray:
    widths = _low_widths(tz, fmt)
    u = head
    u <<= fmt.uint(fmt.mantissa - fmt.head)
    pos, cols = 0, head.shape[1]
    for w in np.unique(widths):
        if w == 0:
            continue
        rows = np.flatnonzero(widths == w)
        n = rows.size * cols
        size = packed_size(n, int(w))
        if pos + size > len(section):
            raise CorruptFileError("corrupt fpc code: truncated low bits")
        vals = unpack_fixed(section[pos:pos + size], n, int(w), fmt.uint)
        pos += size
        vals <<= fmt.uint(fmt.mantissa - fmt.head - int(w))
        if rows.size == u.shape[0]:
            u |= vals.reshape(u.shape)
        else:
            u[rows] |= vals.reshape(rows.size, cols)
        del vals
    if pos != len(section):
        raise CorruptFileError("corrupt fpc code: trailing low bits")
    return u


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(data)


def _unzstd(data: memoryview, size: int) -> bytes:
    from . import zstd_decompress

    out = zstd_decompress(data, size, "fpc code")
    if len(out) != size:
        raise CorruptFileError("corrupt fpc code: side information does not match the shape")
    return out


def bits(a: NamedArray) -> float:
    """Length of :func:`encode` of one tensor, in bits."""
    return 8.0 * len(encode(a))


__all__ = ["encode", "decode", "bits", "FORMATS"]
