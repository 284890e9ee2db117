"""Estimator families, each registering itself in one registry.

``available()`` lists the names, ``get(name)`` builds one (settings as
keywords or ``"name:key=value"``), ``rebuild(record)`` builds one from the
settings a report or run logged, and :mod:`.conformance` checks that an
estimator keeps the contract (see the README's "Adding an estimator").
"""
from __future__ import annotations

from . import compression, entropy, bdm, mdl, precision  # noqa: F401  (registration side effects)
from . import conformance
from .base import (Context, Estimate, Estimator, Setting, available, declared, get, rebuild, register, resolve,
                   unregister)

__all__ = ["Context", "Estimate", "Estimator", "Setting", "available", "declared", "get", "rebuild", "register",
           "resolve", "unregister", "conformance"]
