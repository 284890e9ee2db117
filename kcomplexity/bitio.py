"""Small building blocks of our byte formats: LEB128 varints and fixed-width bit packing."""
from __future__ import annotations

import numpy as np

from .errors import CorruptFileError


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
