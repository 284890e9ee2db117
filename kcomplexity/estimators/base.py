"""The one interface every estimator implements, and the registry that lists them."""
from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EstimatorSettingError, MissingContextError, UnknownEstimatorError
from ..sources import NamedArray, as_named, concat


@dataclass(frozen=True)
class Estimate:
    """One estimator's figure: ``bits``, plus ``details`` such as the distortion a lossy code buys.

    Lossy estimators always put ``mse`` and ``max_abs_err`` (in the weights'
    units) in ``details``; ``mdl`` puts the paper's ``rac`` there.
    """

    bits: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What some estimators need beyond the weights, given explicitly by the caller.

    The core knows three fields: the model, a loss closure and the previous
    weights. Anything else an estimator reads (MoMos' mosaic and q, say) goes
    in ``extra`` under a name the estimator declares in ``reads``, so the core
    names no method's concepts. An estimator lists what it cannot do without
    in ``needs``; when one is missing it is skipped (the trainer and logger
    leave its key out).
    """

    #: the ``nn.Module`` the weights belong to (``intrinsic`` quantises and evaluates it, then restores it)
    model: Any = None
    #: ``loss_fn(model) -> float`` on data the caller fixed (``intrinsic``)
    loss_fn: Callable[[Any], float] | None = None
    #: the weights at the previous logged step, same names and shapes (``delta``)
    previous: Sequence[NamedArray] | None = None
    #: fields estimators declare in ``reads`` (e.g. ``{"mosaic": ..., "q": 4}`` for ``mdl``)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """A core field or an extra one by name; None when absent."""
        if name in ("model", "loss_fn", "previous"):
            return getattr(self, name)
        return self.extra.get(name)

    def missing(self, needs: Sequence[str]) -> list[str]:
        return [n for n in needs if self.get(n) is None]


class Estimator(ABC):
    """Estimates the description length of a tensor, in bits (lower = simpler).

    Subclasses set ``name``, ``kind`` and ``description``, store their
    settings as attributes listed by :meth:`settings`, and implement
    :meth:`_bits` on a :class:`NamedArray`.
    """

    name: str = ""
    #: "code length" (a real decodable code), "lossy code length" (a real code
    #: of the weights at a stated precision; its details carry the distortion),
    #: "proxy" (e.g. BDM) or "reference" (a bound no decoder reaches, e.g.
    #: empirical entropy)
    kind: str = "code length"
    description: str = ""
    #: :class:`Context` fields this estimator cannot work without
    needs: tuple[str, ...] = ()
    #: extra :class:`Context` fields (``Context.extra``) it reads when given, beyond the core three
    reads: tuple[str, ...] = ()
    #: every setting the constructor takes, with its type and allowed values; ``settings()`` returns
    #: exactly these keys, so ``get(name, **est.settings())`` rebuilds an equal estimator
    SETTINGS: Mapping[str, "Setting"] = {}
    #: True when its work releases the GIL (the standard library's and zstandard's compressors), so
    #: ``score(jobs=N)`` may run it on threads; otherwise tensors go to worker processes
    thread_parallel: bool = False

    def settings(self) -> dict[str, Any]:
        """The declared settings' values: ``get(self.name, **self.settings())`` rebuilds an equal estimator.

        Default: the attribute of each declared setting's name.
        """
        return {k: getattr(self, k) for k in self.SETTINGS}

    def facts(self) -> dict[str, Any]:
        """Fixed properties of the code that no setting changes (container format, view), for reports."""
        return {}

    def _validated(self, **values: Any) -> dict[str, Any]:
        """``values`` checked against ``SETTINGS``: the one place settings are validated, whether they came
        from a spec string, keywords or the constructor (EstimatorSettingError naming what is allowed)."""
        return {k: _checked(self.name, self.SETTINGS, k, v, from_text=False) for k, v in values.items()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self), self.name, tuple(sorted(self.settings().items()))))

    def check_sizes(self, sizes: Sequence[int]) -> None:
        """Refuse settings that tensors of these element counts cannot take, before any work is written.

        A trainer calls it with its parameters' sizes before it writes a run;
        the default accepts every size.
        """

    def bits(self, x: Any) -> float:
        """Estimated description length of one array or tensor, in bits."""
        return float(self.estimate(as_named(x)).bits)

    def bits_whole(self, arrays: Sequence[NamedArray]) -> float:
        """Description length of several tensors taken together, in bits.

        Default: the tensors flattened and concatenated in order.
        """
        return float(self._bits(concat(list(arrays))))

    def estimate(self, a: NamedArray) -> Estimate:
        """Bits of one tensor with any details (distortion for lossy codes)."""
        if self.needs:
            raise MissingContextError(f"estimator '{self.name}' needs {', '.join(self.needs)}; it scores a model "
                                      "with its context (trainer, ComplexityLogger), not a single tensor")
        return Estimate(float(self._bits(a)))

    def estimate_whole(self, arrays: Sequence[NamedArray], context: Context | None = None) -> Estimate:
        """Bits of several tensors taken together, with details; ``context`` supplies what ``needs`` names.

        Raises :class:`MissingContextError` when a needed context field is absent.
        """
        self.require(context)
        return Estimate(self.bits_whole(arrays))

    def require(self, context: Context | None) -> Context:
        """``context`` if it holds every field in ``needs``, else :class:`MissingContextError`."""
        context = context or Context()
        missing = context.missing(self.needs)
        if missing:
            raise MissingContextError(f"estimator '{self.name}' needs {', '.join(missing)}")
        return context

    def combine(self, parts: Sequence[Estimate], numels: Sequence[int]) -> Estimate:
        """The total of per-tensor estimates (bits add up; subclasses add their details)."""
        return Estimate(math.fsum(p.bits for p in parts if not math.isnan(p.bits)))

    def encode(self, a: NamedArray) -> bytes:
        """The code of one tensor whose length is :meth:`bits` (``8 * len == bits``), for estimators whose
        kind is a code length; NotImplementedError for proxies and references, which write no code."""
        raise NotImplementedError(f"{self.name} is a {self.kind}: it writes no code")

    def decode(self, data: bytes, like: NamedArray) -> NamedArray:
        """Inverse of :meth:`encode`. ``like`` supplies only the side information the code documents as
        known to its decoder (dtype and shape for the compressors' headerless streams); container codes
        read everything from ``data``. Lossy codes return values within their stated bound."""
        raise NotImplementedError(f"{self.name} is a {self.kind}: it writes no code")

    def breakdown(self, x: NamedArray) -> dict[str, float] | None:
        """Optional parts of :meth:`bits` for one tensor (e.g. bits per bit-plane), or None.

        When given, the values sum to ``bits(x)``; ``score()`` then uses that
        sum instead of computing twice.
        """
        return None

    @abstractmethod
    def _bits(self, a: NamedArray) -> float: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Setting:
    """One declared estimator setting: its type, the values it allows (``allowed`` says which, ``ok`` checks)."""

    type: type
    allowed: str = ""
    ok: Callable[[Any], bool] = lambda v: True
    optional: bool = False   #: None ("none" in a spec string) is allowed

    def describe(self) -> str:
        kind = self.type.__name__ + (" or none" if self.optional else "")
        return f"{kind} {self.allowed}".strip()

    def from_text(self, text: str) -> Any:
        """The value of a spec string, parsed by this setting's own type: no silent coercion."""
        low = text.strip().lower()
        if self.optional and low in ("none", "null"):
            return None
        if self.type is bool:
            if low not in ("true", "false"):
                raise ValueError("expected true or false")
            return low == "true"
        if self.type is int:
            if not re.fullmatch(r"[+-]?\d+", text.strip()):
                raise ValueError("expected an integer")
            return int(text)
        if self.type is float:
            return float(text)  # ValueError for text; range/finiteness checked below
        return text.strip()

    def check(self, value: Any) -> Any:
        """``value`` if it has this setting's type and passes its check, else ValueError."""
        if value is None:
            if self.optional:
                return None
            raise ValueError("a value is required")
        if self.type is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError("expected true or false")
            return bool(value)
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"expected {self.type.__name__}, got a boolean")
        if self.type is int:
            if not isinstance(value, (int, np.integer)):
                raise ValueError(f"expected an integer, got {value!r}")
            value = int(value)
        elif self.type is float:
            if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
                raise ValueError(f"expected a finite number, got {value!r}")
            value = float(value)
        elif not isinstance(value, self.type):
            raise ValueError(f"expected {self.type.__name__}, got {value!r}")
        if not self.ok(value):
            raise ValueError(f"must be {self.allowed}, got {value!r}")
        return value


#: the default estimators, the one list: ``score`` and the CLI use SCORE (fast real codes); the logger and
#: trainer add the MoMos paper's two measures of a trained network (LOGGED)
SCORE = ("lzma", "zstd")
LOGGED = (*SCORE, "bdm", "mdl")

_REGISTRY: dict[str, Callable[..., Estimator]] = {}
_SETTINGS: dict[str, Mapping[str, Setting]] = {}


def register(name: str, factory: Callable[..., Estimator], settings: Mapping[str, Setting] | None = None) -> None:
    """Add an estimator factory under ``name``; ``settings`` (default: the factory's ``SETTINGS``) declares
    every keyword it takes, with type and allowed values, so bad settings fail in one place."""
    if name in _REGISTRY:
        raise ValueError(f"estimator '{name}' is already registered")
    _REGISTRY[name] = factory
    _SETTINGS[name] = dict(settings if settings is not None else getattr(factory, "SETTINGS", {}))


def unregister(name: str) -> None:
    """Remove estimator ``name`` from the registry (for plug-ins and tests that registered their own)."""
    if name not in _REGISTRY:
        raise UnknownEstimatorError(f"estimator '{name}' is not registered")
    del _REGISTRY[name], _SETTINGS[name]


def available() -> list[str]:
    """Names of all registered estimators, in registration order."""
    return list(_REGISTRY)


def declared(name: str) -> Mapping[str, Setting]:
    """The settings estimator ``name`` takes, with their types and allowed values."""
    return _SETTINGS[name]


def get(spec: str | Estimator, **settings: Any) -> Estimator:
    """An estimator by name, with settings as keywords or in the name: ``"zstd:level=22"``.

    Every setting is checked against its declaration (type, allowed values);
    an unknown, repeated or invalid one raises :class:`EstimatorSettingError`
    naming what is allowed. An unknown name raises :class:`UnknownEstimatorError`.
    """
    if isinstance(spec, Estimator):
        return spec
    if not isinstance(spec, str):
        raise UnknownEstimatorError(f"an estimator is a name or an Estimator, got {type(spec).__name__}; "
                                    f"available: {', '.join(available())}")
    name, _, rest = spec.strip().partition(":")
    if name not in _REGISTRY:
        raise UnknownEstimatorError(f"unknown estimator '{name}'; available: {', '.join(available())}")
    decl = _SETTINGS[name]
    values: dict[str, Any] = {}
    for item in rest.split(":") if rest else []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise EstimatorSettingError(f"estimator setting '{item}' in '{spec}' is not key=value")
        if key in values:
            raise EstimatorSettingError(f"setting '{key}' is given twice in '{spec}'")
        values[key] = _checked(name, decl, key, text, from_text=True)
    for key, value in settings.items():
        if key in values:
            raise EstimatorSettingError(f"setting '{key}' is given both in '{spec}' and as a keyword")
        _checked(name, decl, key, None, from_text=None)  # an unknown key is named with what is allowed
        values[key] = value  # the constructor validates it (Estimator._validated), as for every other path
    try:
        return _REGISTRY[name](**values)
    except TypeError as exc:
        raise EstimatorSettingError(f"bad settings for estimator '{name}': {exc}") from None


def _checked(name: str, decl: Mapping[str, Setting], key: str, value: Any, from_text: bool | None) -> Any:
    """``value`` parsed (``from_text``) and checked against ``decl[key]``; ``from_text=None`` checks the key only."""
    allowed = "; ".join(f"{k} ({s.describe()})" for k, s in decl.items()) or "none"
    if key not in decl:
        raise EstimatorSettingError(f"estimator '{name}' has no setting '{key}'; allowed: {allowed}")
    setting = decl[key]
    if from_text is None:
        return None
    try:
        return setting.check(setting.from_text(value) if from_text else value)
    except (ValueError, OverflowError) as exc:
        raise EstimatorSettingError(f"{name}: setting {key}={value!r} is invalid ({exc}); "
                                    f"{key} takes {setting.describe()}") from None


def rebuild(record: Mapping[str, Any]) -> Estimator:
    """The estimator a report or run logged as ``{"name": ..., **settings}`` (other keys such as ``facts`` ignored
    only when they are not settings: an unknown setting is an error)."""
    record = dict(record)
    name = record.pop("name", None)
    record.pop("facts", None)
    if not isinstance(name, str):
        raise UnknownEstimatorError(f"a logged estimator needs a 'name', got {name!r}")
    return get(name, **record)


def _none_given() -> Any:
    raise UnknownEstimatorError(f"no estimator given; available: {', '.join(available())}")


def resolve(estimators: str | Estimator | Sequence[str | Estimator] | Mapping[str, Estimator]) -> dict[str, Estimator]:
    """Estimators keyed by column label, from a name, a comma-separated string, a sequence, or a mapping.

    The label is the spec as written (``"zstd:level=22"``) or, for an
    estimator object, its name; a mapping is taken as {label: estimator}.
    """
    if isinstance(estimators, Mapping):
        return {str(k): get(v) for k, v in estimators.items()} if estimators else _none_given()
    if isinstance(estimators, str):
        specs: list[str | Estimator] = [e.strip() for e in estimators.split(",") if e.strip()]
    elif isinstance(estimators, Estimator):
        specs = [estimators]
    elif isinstance(estimators, (list, tuple)):
        specs = list(estimators)
    else:
        raise UnknownEstimatorError(f"estimators must be a name, a comma-separated string, a list or a mapping, "
                                    f"got {type(estimators).__name__}; available: {', '.join(available())}")
    if not specs:
        _none_given()
    built = [get(s) for s in specs]
    return {(s if isinstance(s, str) else e.name): e for s, e in zip(specs, built)}
