"""Exact q-bit grids: integer levels and one scale that reproduce a tensor bit for bit.

Symmetric per-tensor quantisation (QAT's fake-quantiser, most post-training
int-q schemes) leaves weights w = fl(level * scale) with integer levels in
[-(2^(q-1) - 1), 2^(q-1) - 1] and one float scale per tensor. Such a tensor
is fully described by q bits per value plus its scale, and that is the code
we want for "the weights that exist". The scale is not stored with the
weights, so it is recovered: the largest magnitude sits on the top level, so
scale = max|w| / (2^(q-1) - 1) up to rounding; the neighbouring floats are
tried too, and a candidate is accepted only if it reproduces every value's
bits exactly.
"""
from __future__ import annotations

import numpy as np

#: ulps either side of max|w| / top level that are tried as the scale
_SEARCH_ULPS = 4
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def top_level(q: int) -> int:
    """The largest level of a symmetric q-bit grid: 2^(q-1) - 1."""
    return (1 << (q - 1)) - 1


def find_grid(values: np.ndarray, q: int) -> tuple[np.ndarray, np.floating] | None:
    """Integer levels (int64, same shape) and a scale with fl(level * scale) == values bit for bit, or None.

    Only float32 and float64 tensors are tried (the product is formed in
    their own precision), with q below their width; a tensor with non-finite values, a -0.0, or any
    value off the grid gives None.
    """
    v = np.asarray(values)
    if v.dtype not in (np.float32, np.float64) or v.size == 0 or not 2 <= q < 8 * v.dtype.itemsize:
        return None
    top = top_level(q)
    amax = np.abs(v).max()
    if not np.isfinite(amax):
        return None
    uint = _UINT[v.dtype.itemsize]
    bits = v.view(uint)
    if amax == 0:
        zero = v.dtype.type(0)
        return (np.zeros(v.shape, dtype=np.int64), zero) if not bits.any() else None
    base = v.dtype.type(amax / v.dtype.type(top))
    candidates = [base]
    up = down = base
    for _ in range(_SEARCH_ULPS):
        up, down = np.nextafter(up, v.dtype.type(np.inf)), np.nextafter(down, v.dtype.type(0))
        candidates += [down, up]
    for scale in candidates:
        if not scale > 0:
            continue
        levels = np.rint(v / scale)
        if np.abs(levels).max() > top:
            continue
        if np.array_equal((levels * scale).astype(v.dtype).view(uint), bits):
            return levels.astype(np.int64), scale
    return None


def to_patterns(levels: np.ndarray, q: int) -> np.ndarray:
    """q-bit two's-complement patterns of integer levels (the narrowest unsigned dtype that holds q bits)."""
    dtype = _UINT[max(1, 1 << max(0, (q - 1).bit_length() - 3))]
    return (np.asarray(levels, dtype=np.int64) & ((1 << q) - 1)).astype(dtype)


def from_patterns(patterns: np.ndarray, q: int) -> np.ndarray:
    """Integer levels (int64) from q-bit two's-complement patterns."""
    p = np.asarray(patterns).astype(np.int64)
    return np.where(p >= 1 << (q - 1), p - (1 << q), p)
