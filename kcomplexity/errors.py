"""Exception types raised by kcomplexity.

Every error a user can trigger with bad input is a subclass of
:class:`KComplexityError`, so the CLI can turn it into one line on stderr.
Each also derives from the closest builtin type (``ValueError``,
``FileNotFoundError``, ...) so generic ``except`` clauses keep working.
"""
from __future__ import annotations


class KComplexityError(Exception):
    """Base class for every error caused by bad input to kcomplexity."""


class SourceNotFoundError(KComplexityError, FileNotFoundError):
    """A path given as a source does not exist."""


class UnsupportedSourceError(KComplexityError, TypeError):
    """An object or file type that cannot be turned into named arrays."""


class CorruptFileError(KComplexityError, ValueError):
    """A file exists but cannot be parsed (truncated, corrupt, wrong format)."""


class UnsafeCheckpointError(KComplexityError, ValueError):
    """A pickle checkpoint that ``torch.load(weights_only=True)`` refuses."""


class NonFiniteError(KComplexityError, ValueError):
    """A tensor holds NaN or +-Inf values (pass ``allow_nonfinite=True`` to score raw bytes anyway)."""


class EmptyTensorError(KComplexityError, ValueError):
    """A tensor (or a whole source) has no elements."""


class NonNumericError(KComplexityError, TypeError):
    """A tensor whose dtype is not a real number, integer or bool."""


class UnknownEstimatorError(KComplexityError, KeyError):
    """An estimator name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class EstimatorSettingError(KComplexityError, ValueError):
    """An estimator setting that is invalid (unknown key, bad value)."""


class NotApplicableError(KComplexityError, ValueError):
    """An estimator cannot score this tensor (e.g. a 2-D view of a 1-D bias).

    ``score()`` records such cells as missing (NaN / JSON null) and leaves
    them out of the total.
    """


class MissingContextError(NotApplicableError):
    """An estimator that needs context (a model and loss, the previous weights) was not given it."""


class IntrinsicError(KComplexityError, ValueError):
    """Invalid input to the intrinsic-complexity search (bad budget, a loss that is NaN or raises)."""


class NonFiniteLossError(IntrinsicError, NotApplicableError):
    """The model's loss is NaN or infinite before any quantisation: it has no intrinsic complexity."""


class BDMError(KComplexityError, ValueError):
    """Invalid input to the Block Decomposition Method."""


class CTMTableError(KComplexityError, LookupError):
    """A CTM table that is missing (pybdm wheel not installed) or has no entry for a block shape."""


class MDLError(KComplexityError, ValueError):
    """Invalid input to the mosaic description length or its codec."""


class CorruptMosaicError(MDLError, CorruptFileError):
    """A damaged mosaic code: a :class:`CorruptFileError` like every damaged code, and an :class:`MDLError`."""
