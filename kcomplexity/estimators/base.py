"""The one interface every estimator implements, and the registry that lists them."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

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

    An estimator lists the fields it cannot do without in ``needs``; when one
    is missing it is skipped (the trainer and logger leave its key out).
    """

    #: the ``nn.Module`` the weights belong to (``intrinsic`` quantises and evaluates it, then restores it)
    model: Any = None
    #: ``loss_fn(model) -> float`` on data the caller fixed (``intrinsic``)
    loss_fn: Callable[[Any], float] | None = None
    #: the weights at the previous logged step, same names and shapes (``delta``)
    previous: Sequence[NamedArray] | None = None
    #: the MoMos mosaic the weights were projected to (``mdl`` scores it without re-blocking)
    mosaic: Any = None
    #: bits per stored value when the weights are q-bit quantised (``mdl``)
    q: int | None = None

    def missing(self, needs: Sequence[str]) -> list[str]:
        known = {f.name for f in fields(self)}
        return [n for n in needs if n not in known or getattr(self, n) is None]


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

    def settings(self) -> dict[str, Any]:
        """The settings that change this estimator's numbers."""
        return {}

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


_REGISTRY: dict[str, Callable[..., Estimator]] = {}


def register(name: str, factory: Callable[..., Estimator]) -> None:
    """Add an estimator factory under ``name`` (called with keyword settings)."""
    if name in _REGISTRY:
        raise ValueError(f"estimator '{name}' is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Names of all registered estimators, in registration order."""
    return list(_REGISTRY)


def get(spec: str | Estimator, **settings: Any) -> Estimator:
    """An estimator by name, with settings as keywords or in the name: ``"zstd:level=22"``.

    Raises :class:`UnknownEstimatorError` (listing the valid names) or
    :class:`EstimatorSettingError`.
    """
    if isinstance(spec, Estimator):
        return spec
    name, _, rest = str(spec).strip().partition(":")
    if name not in _REGISTRY:
        raise UnknownEstimatorError(f"unknown estimator '{name}'; available: {', '.join(available())}")
    for item in filter(None, rest.split(":")):
        key, eq, value = item.partition("=")
        if not eq:
            raise EstimatorSettingError(f"estimator setting '{item}' is not key=value")
        settings[key.strip()] = _parse_value(value.strip())
    try:
        return _REGISTRY[name](**settings)
    except TypeError as exc:
        raise EstimatorSettingError(f"bad settings for estimator '{name}': {exc}") from None


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def resolve(estimators: str | Estimator | Sequence[str | Estimator] | Mapping[str, Estimator]) -> dict[str, Estimator]:
    """Estimators keyed by column label, from a name, a comma-separated string, a sequence, or a mapping.

    The label is the spec as written (``"zstd:level=22"``) or, for an
    estimator object, its name; a mapping is taken as {label: estimator}.
    """
    if isinstance(estimators, Mapping):
        return {str(k): get(v) for k, v in estimators.items()}
    if isinstance(estimators, str):
        specs: list[str | Estimator] = [e.strip() for e in estimators.split(",") if e.strip()]
    elif isinstance(estimators, Estimator):
        specs = [estimators]
    else:
        specs = list(estimators)
    if not specs:
        raise UnknownEstimatorError(f"no estimator given; available: {', '.join(available())}")
    return {(s if isinstance(s, str) else s.name): get(s) for s in specs}
