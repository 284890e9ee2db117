"""Entropy coding by asymmetric numeral systems: the one module that imports ``constriction``.

Every code that spends fractional bits per symbol goes through here, so the
guard against damaged input is written once: constriction raises
``ValueError``, or a Rust panic (a ``BaseException``), when asked to decode
words that no encoder wrote; both become :class:`CorruptFileError`.

A stream is a stack: what is pushed last is decoded first, so encoders
push their parts in reverse order and decoders pop them in order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CorruptFileError

#: ANS models need symbols inside int32 and an alphabet the coder's 24-bit fixed-point probabilities can cover
MAX_ALPHABET = 1 << 20


def categorical(counts: np.ndarray) -> Any:
    """A model with probabilities proportional to ``counts`` (symbols 0..len-1; a zero count is never coded)."""
    import constriction

    return constriction.stream.model.Categorical(np.asarray(counts, dtype=np.float64), perfect=False)


def per_row() -> Any:
    """A categorical model whose probabilities are given per symbol at coding time (n x C rows)."""
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def quantized(family: str, lo: int, hi: int, mean: float, scale: float) -> Any:
    """A Gaussian or Laplace distribution discretised to the integers lo..hi."""
    import constriction

    model = constriction.stream.model
    cls = model.QuantizedGaussian if family == "gaussian" else model.QuantizedLaplace
    return cls(lo, hi, mean, scale)


def encode(parts: Sequence[tuple[Any, np.ndarray, np.ndarray | None]]) -> bytes:
    """One stream of every (model, symbols, per-row probabilities or None) part; decoded in the given order."""
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    for model, symbols, probs in reversed(parts):
        if symbols.size:
            if probs is None:
                coder.encode_reverse(symbols.astype(np.int32, copy=False), model)
            else:
                coder.encode_reverse(symbols.astype(np.int32, copy=False), model, probs)
    return coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Pops the parts of an :func:`encode` stream in order; damaged words raise :class:`CorruptFileError`."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        import constriction

        self.what = what
        if len(data) % 4:
            raise CorruptFileError(f"corrupt {what}: the ANS stream is not whole 32-bit words")
        words = np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)
        try:
            self._coder = constriction.stream.stack.AnsCoder(words)
        except ValueError as exc:  # e.g. a stream ending in a zero word, which no encoder writes
            raise CorruptFileError(f"corrupt {what}: {exc}") from None

    def decode(self, model: Any, n: int, probs: np.ndarray | None = None, dtype: Any = np.int64) -> np.ndarray:
        """The next ``n`` symbols (as ``dtype``) under ``model`` (with per-row ``probs`` for :func:`per_row`)."""
        if n == 0:
            return np.zeros(0, dtype=dtype)
        try:
            out = self._coder.decode(model, n) if probs is None else self._coder.decode(model, probs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # ValueError, or a Rust panic, on words no encoder wrote
            raise CorruptFileError(f"corrupt {self.what}: {type(exc).__name__}") from None
        return np.asarray(out, dtype=dtype)

    def is_empty(self) -> bool:
        return bool(self._coder.is_empty())

    def finish(self) -> None:
        """CorruptFileError unless the stream was read exactly to its end (a truncated or altered stream still
        yields symbols; the coder not returning to its initial state gives it away)."""
        if not self.is_empty():
            raise CorruptFileError(f"corrupt {self.what}: words left over after the last symbol (truncated or "
                                   "altered)")


__all__ = ["encode", "Decoder", "categorical", "per_row", "quantized", "MAX_ALPHABET"]
