"""Exceptions for bad MoMos input; all are kcomplexity errors so the CLIs treat them alike."""
from __future__ import annotations

from kcomplexity.errors import KComplexityError


class MoMosError(KComplexityError, ValueError):
    """Invalid MoMos setting (block size, capacity, k, scope, ...) or a model it cannot project."""


class DataError(MoMosError):
    """A data set that is unknown or whose files are missing."""


class RunError(MoMosError):
    """A run directory that cannot be used: holds another run, corrupt checkpoint, nothing to resume."""


class RunBusyError(RunError):
    """The run directory is locked by another live process (its pid is in the message)."""


class PrequentialError(MoMosError):
    """Chunk boundaries that cannot be used, or a model whose predictions are not finite."""
