"""Order-0 empirical entropy: a reference figure, not a code length.

n * H(values) with H the entropy of the empirical distribution of distinct
values (compared by bit pattern). No decoder can reach it without also
receiving the distribution, so it is a lower reference for what a
memoryless code could do, not an upper bound on K(w).
"""
from __future__ import annotations

import numpy as np

from ..sources import NamedArray
from .base import Estimator, register


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """n times the order-0 empirical entropy of ``symbols`` (any 1-D integer array), in bits."""
    _, counts = np.unique(symbols, return_counts=True)
    n = float(symbols.size)
    c = counts.astype(np.float64)
    return float(n * np.log2(n) - np.dot(c, np.log2(c)))


class Entropy(Estimator):
    name = "entropy"
    kind = "reference"
    description = "n x order-0 empirical entropy of the values (reference, not a code length)"

    def _bits(self, a: NamedArray) -> float:
        return empirical_entropy_bits(a.bit_patterns())


register("entropy", Entropy)
