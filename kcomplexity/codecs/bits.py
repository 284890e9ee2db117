"""Small building blocks of our byte formats: LEB128 varints, count tables and fixed-width bit packing.

Each is written once here and used by every codec.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptFileError


def varint(x: int) -> bytes:
    """A non-negative integer as an unsigned LEB128 varint."""
    out = bytearray()
    while True:
        byte = x & 0x7F
        x >>= 7
        out.append(byte | (0x80 if x else 0))
        if not x:
            return bytes(out)


#: the longest varint our formats write: 10 bytes hold any 64-bit value
MAX_VARINT_BYTES = 10


def read_varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; IndexError if the buffer ends inside it.

    A varint over 10 bytes or 64 bits is a damaged code (CorruptFileError):
    bounding it keeps decoding linear in the input, where an unbounded run of
    continuation bytes would build an ever larger integer.
    """
    value = shift = 0
    for _ in range(MAX_VARINT_BYTES):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if value >> 64:
                break
            return value, pos
    raise CorruptFileError(f"damaged code: a varint at byte {pos} is longer than 64 bits")


def zigzag(x: int) -> int:
    """A signed integer mapped to a non-negative one (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...)."""
    return 2 * x if x >= 0 else -2 * x - 1


def unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Each value as ``width`` bits, MSB first, concatenated (uint8 0/1)."""
    if width == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)


def from_bits(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`to_bits` (uint64 values)."""
    words = bits.reshape(-1, width).astype(np.uint64)
    out = np.zeros(words.shape[0], dtype=np.uint64)
    for j in range(width):
        out = (out << np.uint64(1)) | words[:, j]
    return out


#: values counted at a time by :func:`bincount`
COUNT_BLOCK = 1 << 20


def bincount(values: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount`` of non-negative integers a block at a time: numpy widens its whole input to int64 first,
    which for int32 or int16 symbols would cost two or four times their own memory. The counts are the same."""
    flat = values.reshape(-1)
    if flat.size <= COUNT_BLOCK:
        return np.bincount(flat, minlength=minlength)
    size = max(minlength, int(flat.max()) + 1)
    out = np.zeros(size, dtype=np.int64)
    for lo in range(0, flat.size, COUNT_BLOCK):
        out += np.bincount(flat[lo:lo + COUNT_BLOCK], minlength=size)
    return out


#: bits handled at a time by :class:`BitWriter` and :func:`read_fixed` (a bit costs a byte while it is handled)
BIT_BLOCK = 1 << 20


class BitWriter:
    """An MSB-first bit stream built a block at a time: the output bytes are the same as ``np.packbits`` of all
    bits concatenated (the last byte zero-padded), while only one block's bits (one byte each) is ever held."""

    def __init__(self, prefix: bytes = b"") -> None:
        self._out = bytearray(prefix)  # bytes that come before the bits (a header): no concatenation after
        self._rest = np.zeros(0, dtype=np.uint8)

    def fixed(self, values: np.ndarray, width: int) -> None:
        """Each value in ``width`` bits, MSB first."""
        flat = values.reshape(-1)
        if width == 0 or flat.size == 0:
            return
        block = max(8, BIT_BLOCK // width)
        for lo in range(0, flat.size, block):
            self._append(to_bits(flat[lo:lo + block], width))

    def variable(self, codes: np.ndarray, lengths: np.ndarray) -> None:
        """Codeword ``codes[i]`` in ``lengths[i]`` bits, MSB first, for every i."""
        if codes.size == 0:
            return
        block = max(8, BIT_BLOCK // int(lengths.max()))
        for lo in range(0, codes.size, block):
            c, n = codes[lo:lo + block], lengths[lo:lo + block]
            j = np.arange(int(n.max()), dtype=np.int64)
            shift = np.clip(n[:, None] - 1 - j[None, :], 0, None).astype(np.uint64)
            bits = ((c[:, None] >> shift) & np.uint64(1)).astype(np.uint8)
            self._append(bits[j[None, :] < n[:, None]])

    def _append(self, bits: np.ndarray) -> None:
        if self._rest.size:
            bits = np.concatenate([self._rest, bits])
        whole = bits.size - bits.size % 8
        self._out += np.packbits(bits[:whole]).tobytes()
        self._rest = bits[whole:].copy()

    def getvalue(self) -> bytes:
        if self._rest.size:
            self._out += np.packbits(self._rest).tobytes()
            self._rest = np.zeros(0, dtype=np.uint8)
        return bytes(self._out)


def bits_at(raw: np.ndarray, start: int, count: int) -> np.ndarray:
    """``count`` bits (uint8 0/1) of the packed bytes ``raw`` from bit ``start``, zeros past its end."""
    first, last = start // 8, min(raw.size, -(-(start + count) // 8))
    bits = np.unpackbits(raw[first:last])[start % 8:start % 8 + count] if first < last else np.zeros(0, np.uint8)
    return bits if bits.size == count else np.concatenate([bits, np.zeros(count - bits.size, dtype=np.uint8)])


def read_fixed(raw: np.ndarray, start: int, count: int, width: int, dtype: Any = np.uint64) -> np.ndarray:
    """``count`` values of ``width`` bits each (MSB first) from bit ``start`` of the packed bytes ``raw``, as
    ``dtype``, a block at a time (inverse of :meth:`BitWriter.fixed`); the caller checks the bytes hold them."""
    out = np.zeros(count, dtype=dtype)
    if width == 0:
        return out
    block = max(8, BIT_BLOCK // width)
    for lo in range(0, count, block):
        n = min(block, count - lo)
        out[lo:lo + n] = from_bits(bits_at(raw, start + lo * width, n * width), width)
    return out


def varints(values: np.ndarray) -> bytes:
    """Non-negative integers (< 2**63) as consecutive LEB128 varints, vectorised."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    groups = np.stack([(v >> np.uint64(7 * j)) & np.uint64(0x7F) for j in range(MAX_VARINT_BYTES)], axis=1)
    used = np.ones(v.size, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES):
        used += (v >> np.uint64(7 * j)) > 0
    keep = np.arange(MAX_VARINT_BYTES)[None, :] < used[:, None]
    more = np.arange(MAX_VARINT_BYTES)[None, :] < (used - 1)[:, None]
    return (groups.astype(np.uint8) | (more.astype(np.uint8) << np.uint8(7)))[keep].tobytes()


def read_varints(buf: bytes | memoryview, pos: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` consecutive varints from ``pos`` (int64) and the position after them, vectorised.

    CorruptFileError when the buffer ends first or a value exceeds 63 bits.
    """
    raw = np.frombuffer(bytes(buf[pos:]), dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size < count:
        raise CorruptFileError("damaged code: it ends inside a run of varints")
    if count == 0:
        return np.zeros(0, dtype=np.int64), pos
    ends = ends[:count]
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 9:  # 9 bytes hold 63 bits, all an int64 count needs
        raise CorruptFileError("damaged code: a count is longer than 63 bits")
    out = np.zeros(count, dtype=np.int64)
    for j in range(int(lengths.max())):
        sel = lengths > j
        out[sel] |= (raw[starts[sel] + j].astype(np.int64) & 0x7F) << (7 * j)
    return out, pos + int(ends[-1]) + 1


#: zstd level of count tables: they are small, so the strongest level costs nothing noticeable
TABLE_LEVEL = 19


def pack_tables(tables: list[np.ndarray]) -> bytes:
    """Arrays of non-negative integers (symbol counts, small headers) as one zstd-packed section:
    each array is its length then its values, as varints."""
    import zstandard

    body = b"".join(varint(int(t.size)) + varints(t) for t in tables)
    return zstandard.ZstdCompressor(level=TABLE_LEVEL).compress(body)


def unpack_tables(section: bytes | memoryview, count: int, max_size: int, what: str) -> list[np.ndarray]:
    """Inverse of :func:`pack_tables` for ``count`` arrays of at most ``max_size`` values each."""
    import zstandard

    try:
        raw = zstandard.ZstdDecompressor().decompress(bytes(section), max_output_size=count * (max_size + 1) * 10)
    except zstandard.ZstdError as exc:
        raise CorruptFileError(f"corrupt {what}: {exc}") from None
    out, pos = [], 0
    try:
        for _ in range(count):
            size, pos = read_varint(raw, pos)
            if size > max_size:
                raise CorruptFileError(f"corrupt {what}: a table of {size:,} entries")
            values, pos = read_varints(raw, pos, size)
            out.append(values)
    except IndexError:
        raise CorruptFileError(f"corrupt {what}: truncated table") from None
    if pos != len(raw):
        raise CorruptFileError(f"corrupt {what}: bytes after the last table")
    return out


def pack_fixed(vals: np.ndarray, w: int) -> bytes:
    """w-bit unsigned values as whole byte planes (low bytes) plus a packed remainder of w % 8 bits each."""
    planes = vals.view(np.uint8).reshape(-1, vals.itemsize)  # little-endian bytes of each value
    out = [np.ascontiguousarray(planes[:, j]).tobytes() for j in range(w // 8)]
    rest = w % 8
    if rest:
        top = planes[:, w // 8]
        if 8 % rest == 0:  # 1, 2 or 4 bits: several values per byte by shifts, no bit matrix
            per = 8 // rest
            padded = np.zeros(-(-top.size // per) * per, dtype=np.uint8)
            padded[:top.size] = top
            grid = padded.reshape(-1, per)
            packed = np.zeros(grid.shape[0], dtype=np.uint8)
            for j in range(per):
                packed |= grid[:, j] << np.uint8(rest * (per - 1 - j))
            out.append(packed.tobytes())
        else:
            bits = np.unpackbits(top[:, None], axis=1)[:, 8 - rest:]
            out.append(np.packbits(bits.reshape(-1)).tobytes())
    return b"".join(out)


def packed_size(n: int, w: int) -> int:
    """Bytes of :func:`pack_fixed` output for n values of w bits."""
    return n * (w // 8) + (n * (w % 8) + 7) // 8


def unpack_fixed(data: memoryview, n: int, w: int, dtype: Any = np.int64) -> np.ndarray:
    """Inverse of :func:`pack_fixed` (values as ``dtype``, which must hold w bits); ``data`` holds exactly
    ``packed_size(n, w)`` bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    vals = np.zeros(n, dtype=dtype)
    for j in range(w // 8):
        vals |= raw[j * n:(j + 1) * n].astype(dtype) << vals.dtype.type(8 * j)
    rest = w % 8
    if rest:
        tail = raw[(w // 8) * n:]
        if 8 % rest == 0:
            per = 8 // rest
            grid = np.stack([(tail >> np.uint8(rest * (per - 1 - j))) & np.uint8((1 << rest) - 1)
                             for j in range(per)], axis=1)
            top = grid.reshape(-1)[:n]
        else:
            bits = np.unpackbits(tail)[: n * rest].reshape(n, rest)
            top = np.packbits(np.concatenate([np.zeros((n, 8 - rest), dtype=np.uint8), bits], axis=1),
                              axis=1).reshape(-1)
        vals |= top.astype(dtype) << vals.dtype.type(8 * (w // 8))
    return vals


