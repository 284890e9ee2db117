"""Checks of values that many entry points share, each written once."""
from __future__ import annotations

from typing import Any

from .errors import EstimatorSettingError

#: seeds are 32-bit everywhere (numpy, torch and scikit-learn all accept this range)
SEED_MAX = 2 ** 32 - 1


def seed(value: Any, error: type[Exception] = EstimatorSettingError) -> int:
    """``value`` as a seed in 0..2**32-1, else ``error`` naming the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise error(f"seed must be a whole number in 0..{SEED_MAX}, got {value!r}")
    return value


def seed_arg(text: str) -> int:
    """An argparse ``type=`` for ``--seed``: the same range, as a usage error."""
    import argparse

    try:
        return seed(int(text), ValueError)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number in 0..{SEED_MAX}, got {text!r}") from None
