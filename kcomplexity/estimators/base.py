"""The one interface every estimator implements, and the registry that lists them."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import EstimatorSettingError, UnknownEstimatorError
from ..sources import NamedArray, as_named, concat


class Estimator(ABC):
    """Estimates the description length of a tensor, in bits (lower = simpler).

    Subclasses set ``name``, ``kind`` and ``description``, store their
    settings as attributes listed by :meth:`settings`, and implement
    :meth:`_bits` on a :class:`NamedArray`.
    """

    name: str = ""
    #: "code length" (a real decodable code), "proxy" (e.g. BDM) or
    #: "reference" (a bound no decoder reaches, e.g. empirical entropy)
    kind: str = "code length"
    description: str = ""

    def settings(self) -> dict[str, Any]:
        """The settings that change this estimator's numbers."""
        return {}

    def bits(self, x: Any) -> float:
        """Estimated description length of one array or tensor, in bits."""
        return float(self._bits(as_named(x)))

    def bits_whole(self, arrays: Sequence[NamedArray]) -> float:
        """Description length of several tensors taken together, in bits.

        Default: the tensors flattened and concatenated in order.
        """
        return float(self._bits(concat(list(arrays))))

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
