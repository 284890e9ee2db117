"""What an estimator sees: transformations of a weight tensor into bytes or symbols.

* raw bytes in the tensor's own dtype (:meth:`NamedArray.raw`),
* byte planes: byte j of every element, for each j (what ZipNN compresses),
* sign bits ``w > 0`` (the MoMos paper's BDM input),
* a uniform b-bit quantisation and its bit-planes (QuBD's BDM input),
* a k-symbol quantisation (for k-symbol BDM).
"""
from __future__ import annotations

import numpy as np

from .errors import EstimatorSettingError
from .sources import NamedArray


def byte_planes(a: NamedArray) -> np.ndarray:
    """(itemsize, numel) uint8 array; row j holds byte j (little-endian) of every element."""
    return np.ascontiguousarray(a.data.reshape(-1).view(np.uint8).reshape(-1, a.itemsize).T)


def sign_bits(values: np.ndarray) -> np.ndarray:
    """1 where a value is strictly positive, else 0 (uint8, same shape)."""
    return (np.asarray(values) > 0).astype(np.uint8)


def quantise_uniform(values: np.ndarray, bits: int, clip: float | None = None) -> np.ndarray:
    """Uniform quantisation to integers 0..2**bits-1 over [min, max] (same shape, int64).

    ``clip`` (a percentile such as 99.9) first clips values to the
    [100-clip, clip] percentile range so a few outliers do not squash the grid.
    A constant tensor maps to all zeros.
    """
    if not 1 <= int(bits) <= 16:
        raise EstimatorSettingError(f"bits must be in 1..16, got {bits}")
    v = np.asarray(values, dtype=np.float64)
    if clip is not None:
        if not 50.0 < float(clip) <= 100.0:
            raise EstimatorSettingError(f"clip is a percentile in (50, 100], got {clip}")
        lo, hi = np.percentile(v, [100.0 - clip, clip])
        v = np.clip(v, lo, hi)
    else:
        lo, hi = float(v.min()), float(v.max())
    levels = (1 << int(bits)) - 1
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.int64)
    return np.rint((v - lo) * (levels / (hi - lo))).astype(np.int64)


def bit_planes(q: np.ndarray, bits: int) -> np.ndarray:
    """Bit-planes of non-negative integers: shape (bits, *q.shape), plane 0 = most significant, uint8."""
    shifts = np.arange(bits - 1, -1, -1).reshape((-1,) + (1,) * q.ndim)
    return ((q[None, ...] >> shifts) & 1).astype(np.uint8)


def quantise_k(values: np.ndarray, k: int) -> np.ndarray:
    """Values mapped to k symbols 0..k-1 by k equal-width bins over [min, max] (int64)."""
    if k < 2:
        raise EstimatorSettingError(f"k must be at least 2, got {k}")
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.int64)
    # halves keep hi - lo finite for values near +-1.8e308
    return np.minimum((((v / 2 - lo / 2) / (hi / 2 - lo / 2)) * k).astype(np.int64), k - 1)


def matrix_view(a: NamedArray) -> np.ndarray | None:
    """Values reshaped to 2-D (dim 0 x rest), or None for tensors with fewer than 2 dims."""
    if a.data.ndim < 2:
        return None
    return a.values().reshape(a.shape[0], -1)
