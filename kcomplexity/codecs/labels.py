"""A real code for class labels driven by predicted distributions (the data part of an MDL code).

Each segment is (probabilities n x C, labels n): label i is coded with its
own row of probabilities by one ANS stream (``constriction``). Segments
decode in the order they were given, so a prequential decoder can decode
a chunk, train on it, predict the next chunk and go on. The code's length
is within a few 32-bit words of the sum of -log2 p (the ideal length); the
probabilities are fixed-point approximated by the coder, which costs a
hair more for very confident predictions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import CorruptFileError, KComplexityError
from . import ans


class LabelCodeError(KComplexityError):
    """Probabilities and labels that cannot be coded (shape, range, non-finite, not a distribution)."""


def ideal_bits(probs: np.ndarray, labels: np.ndarray) -> float:
    """Sum of -log2 p(label) in bits: what an ideal entropy coder spends on these labels."""
    probs, labels = _check(probs, labels)
    return float(-np.log2(probs[np.arange(labels.size), labels]).sum())


def uniform(n: int, classes: int) -> np.ndarray:
    """n rows of the uniform distribution over ``classes``."""
    return np.full((int(n), int(classes)), 1.0 / int(classes))


def encode_labels(segments: Sequence[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """One ANS code of every segment's labels under its probabilities; ``len(result) * 8`` bits."""
    checked = [_check(p, y) for p, y in segments]
    return ans.encode([(ans.per_row(), labels, probs) for probs, labels in checked])


class LabelDecoder:
    """Decode :func:`encode_labels` output one segment at a time: ``decoder.decode(probs) -> labels``."""

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CorruptFileError(f"a label code is bytes, got {type(data).__name__}")
        self._decoder = ans.Decoder(data, "label code")

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """The next segment's labels, given the same probabilities the encoder used (n x C)."""
        probs = _check_probs(probs)
        if not probs.shape[0]:
            return np.zeros(0, dtype=np.int64)
        if self._decoder.is_empty():  # every label costs > 0 bits (no probability is 1), so its code cannot be empty
            raise CorruptFileError("corrupt label code: it ends before the labels do (truncated?)")
        return self._decoder.decode(ans.per_row(), probs.shape[0], probs)

    def finish(self) -> None:
        """After the last segment: CorruptFileError unless the code was read exactly to its end."""
        self._decoder.finish()


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise LabelCodeError(f"probabilities must be an n x C array, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise LabelCodeError("probabilities must be finite and non-negative")
    if p.shape[0] and not np.allclose(p.sum(1), 1.0, atol=1e-6):
        raise LabelCodeError("each row of probabilities must sum to 1")
    return np.ascontiguousarray(p)


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _check_probs(probs)
    y = np.asarray(labels).reshape(-1)
    if y.size != p.shape[0]:
        raise LabelCodeError(f"{y.size} labels for {p.shape[0]} rows of probabilities")
    if y.size and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= p.shape[1]):
        raise LabelCodeError(f"labels must be integers in 0..{p.shape[1] - 1}")
    y = y.astype(np.int64)
    if y.size and (p[np.arange(y.size), y] <= 0).any():
        raise LabelCodeError("a label has probability 0: it cannot be coded")
    return p, y


__all__ = ["encode_labels", "LabelDecoder", "ideal_bits", "uniform", "LabelCodeError"]
