"""Estimator families, each registering itself in one registry.

``available()`` lists the names, ``get(name)`` builds one (settings as
keywords or ``"name:key=value"``).
"""
from __future__ import annotations

from . import compression, entropy, bdm, mdl, precision  # noqa: F401  (registration side effects)
from .base import Context, Estimate, Estimator, available, get, register, resolve

__all__ = ["Context", "Estimate", "Estimator", "available", "get", "register", "resolve"]
