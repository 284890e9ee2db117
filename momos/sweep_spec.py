"""A sweep's specification: a base config, grid and zip axes, resources per run, expanded into named points.

A spec is TOML (stdlib ``tomllib``)::

    [base]            # TrainConfig fields every point shares
    model = "mlp"
    epochs = 3
    [grid]            # every combination of these lists is a point
    method = ["baseline", "momos"]
    seed = [0, 1]
    [zip]             # optional: lists of one length that advance together
    s = [2, 4]
    capacity = [0.05, 0.2]
    [resources]       # optional: per run; cpus is also the run's torch thread count
    cpus = 1
    gpus = 0

Points are zip rows x grid combinations. A point's name is built from the axes
whose values vary, in spec order (``method=momos,s=4,seed=1``); it names the
point's run directory. No torch is imported here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcomplexity.fileio import read_text

from .errors import MoMosError

SECTIONS = ("base", "grid", "zip", "resources")
#: the most points one sweep may hold: each is a run directory, and every point is validated before any starts
MAX_POINTS = 10_000
#: per-run resources: CPUs (also the run's torch threads, so results do not depend on --jobs) and GPUs
RESOURCES = {"cpus": 1, "gpus": 0}
FORMAT, FORMAT_VERSION = "momos-sweep", 1
#: a point name longer than this is shortened with a hash (file systems allow 255 bytes)
MAX_NAME = 200


class SweepSpecError(MoMosError):
    """A sweep specification that cannot be used (unknown key, empty axis, clash, invalid value)."""


def _fields() -> dict[str, dataclasses.Field]:
    from .config import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


@dataclass
class Point:
    """One run of a sweep: its name (its folder), the axis values that vary, and its full config."""

    name: str
    axes: dict[str, Any]
    config: dict[str, Any]


@dataclass
class Spec:
    """A validated sweep specification (see the module docstring)."""

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: dict(RESOURCES))

    @classmethod
    def load(cls, path: str | Path) -> "Spec":
        """Read a TOML spec file; SweepSpecError for anything unusable."""
        return cls.from_mapping(_read_toml(path), str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "spec", check_keys: bool = True) -> "Spec":
        """Validate the sections and keys of a parsed spec (values are checked per point by :meth:`points`).

        ``check_keys=False`` skips naming keys against TrainConfig, which imports
        torch; reading a sweep folder we wrote (``momos compare``) needs no torch.
        """
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise SweepSpecError(f"{where}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
        for name in SECTIONS:
            if not isinstance(data.get(name, {}), dict):
                raise SweepSpecError(f"{where}: [{name}] must be a table of key = value lines")
        fields = _fields() if check_keys else {k: None for n in ("base", "grid", "zip") for k in data.get(n, {})}
        allowed = ", ".join(fields)
        for name in ("base", "grid", "zip"):
            bad = sorted(set(data.get(name, {})) - set(fields))
            if bad:
                raise SweepSpecError(f"{where}: unknown key(s) {', '.join(bad)} in [{name}]; allowed: {allowed}")
        bad = sorted(set(data.get("resources", {})) - set(RESOURCES))
        if bad:
            raise SweepSpecError(f"{where}: unknown key(s) {', '.join(bad)} in [resources]; allowed: "
                                 f"{', '.join(RESOURCES)}")
        base = {k: _normalise(k, v) for k, v in data.get("base", {}).items()}
        axes: dict[str, dict[str, list[Any]]] = {}
        for name in ("grid", "zip"):
            axes[name] = {}
            for key, values in data.get(name, {}).items():
                if not isinstance(values, list):
                    raise SweepSpecError(f"{where}: [{name}] {key} must be a list of values, got {values!r}")
                if not values:
                    raise SweepSpecError(f"{where}: [{name}] {key} is an empty axis")
                axes[name][key] = [_normalise(key, v) for v in values]
        both = sorted(set(axes["grid"]) & set(axes["zip"]))
        if both:
            raise SweepSpecError(f"{where}: {', '.join(both)} is in both [grid] and [zip]")
        clash = sorted(set(base) & (set(axes["grid"]) | set(axes["zip"])))
        if clash:
            raise SweepSpecError(f"{where}: {', '.join(clash)} is in [base] and also an axis; keep it in one place")
        lengths = {k: len(v) for k, v in axes["zip"].items()}
        if len(set(lengths.values())) > 1:
            raise SweepSpecError(f"{where}: [zip] axes must have one length, got "
                                 + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        count = max(lengths.values(), default=1) * math.prod(len(v) for v in axes["grid"].values())
        if count > MAX_POINTS:  # counted before any point is expanded or validated
            raise SweepSpecError(f"{where}: the spec makes {count:,} points, more than a sweep holds "
                                 f"({MAX_POINTS:,}); split it into several sweeps")
        resources = dict(RESOURCES)
        for key, value in data.get("resources", {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise SweepSpecError(f"{where}: [resources] {key} must be a number >= 0, got {value!r}")
            resources[key] = value
        if resources["cpus"] < 1 or int(resources["cpus"]) != resources["cpus"]:
            raise SweepSpecError(f"{where}: [resources] cpus must be a whole number >= 1, got {resources['cpus']}")
        resources["cpus"] = int(resources["cpus"])
        return cls(base, axes["grid"], axes["zip"], resources)

    @classmethod
    def from_options(cls, grid: list[str], sets: list[str], zips: list[str] | None = None,
                     path: str | Path | None = None) -> "Spec":
        """The spec of a TOML file (if any) plus ``--grid key=v1,v2 --zip key=v1,v2 --set key=value`` options."""
        def pair(text: str, flag: str) -> tuple[str, str]:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise SweepSpecError(f"{flag} expects key=value, got {text!r}")
            return key.strip().replace("-", "_"), value

        data: dict[str, dict[str, Any]] = {"base": {}, "grid": {}, "zip": {}}
        if path is not None:
            data = {**data, **_read_toml(path)}
            for name in ("base", "grid", "zip"):
                if not isinstance(data[name], dict):
                    raise SweepSpecError(f"{path}: [{name}] must be a table of key = value lines")
                data[name] = dict(data[name])
        for text in sets:
            key, value = pair(text, "--set")
            data["base"][key] = _parse_value(value)
        for name, items in (("grid", grid), ("zip", zips or [])):
            for text in items:
                key, value = pair(text, f"--{name}")
                if key in data[name]:
                    raise SweepSpecError(f"--{name} {key} is given twice (or also in the spec file)")
                data[name][key] = [_parse_value(v) for v in value.split(",") if v.strip()]
        return cls.from_mapping(data, str(path) + " and the command line" if path else "command line")

    def axis_order(self) -> list[str]:
        return [*self.zip, *self.grid]

    def combinations(self) -> list[dict[str, Any]]:
        """Every point's axis values: zip rows x grid combinations, in spec order."""
        rows = [dict(zip(self.zip, vals)) for vals in zip(*self.zip.values())] if self.zip else [{}]
        combos = [dict(zip(self.grid, vals)) for vals in itertools.product(*self.grid.values())] if self.grid else [{}]
        return [{**row, **combo} for row in rows for combo in combos]

    def named(self) -> list[tuple[str, dict[str, Any]]]:
        """Every point's folder name and axis values, without validating (no torch needed)."""
        combos = self.combinations()
        varying = [k for k in self.axis_order() if len({_key(c[k]) for c in combos}) > 1]
        return [(point_name({k: c[k] for k in varying}) or "run", c) for c in combos]

    def points(self) -> list[Point]:
        """Every point, validated before any runs: an invalid value is named with its point."""
        from .config import TrainConfig

        points, seen_names, seen_configs = [], {}, {}
        for name, combo in self.named():
            try:
                cfg = TrainConfig.from_json({"threads": self.resources["cpus"], **self.base, **combo}).resolved()
            except MoMosError as exc:
                raise SweepSpecError(f"point {name}: {exc}") from None
            config = cfg.to_json()
            key = json.dumps(config, sort_keys=True)
            if key in seen_configs or name in seen_names:
                other = seen_configs.get(key) or seen_names.get(name)
                raise SweepSpecError(f"duplicate points: {name} and {other} are the same run")
            seen_names[name], seen_configs[key] = name, name
            points.append(Point(name, {k: combo[k] for k in self.axis_order()}, config))
        return points

    def to_toml(self) -> str:
        """The resolved spec as TOML, with the format marker that makes its folder a sweep of ours."""
        lines = [f'format = "{FORMAT}"', f"format_version = {FORMAT_VERSION}", ""]
        for name in SECTIONS:
            table = getattr(self, name)
            if name == "zip" and not table:
                continue
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in table.items() if v is not None]
            lines.append("")
        return "\n".join(lines)


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        text = read_text(path, limit=2 ** 20, what="sweep spec")
    except FileNotFoundError:
        raise SweepSpecError(f"no such sweep spec: {path}") from None
    except (OSError, ValueError) as exc:
        raise SweepSpecError(f"{path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise SweepSpecError(f"{path} is not valid TOML: {str(exc)[:200]}") from None


def _normalise(key: str, value: Any) -> Any:
    """A spec value as TrainConfig takes it: estimators as a list of names (TOML gives a string or a list)."""
    if key == "estimators" and isinstance(value, str):
        return [e.strip() for e in value.split(",") if e.strip()]
    return value


def _parse_value(text: str) -> Any:
    """A command-line value: a TOML literal (3, 1e-3, true, [..]) or else a plain string."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _toml(value: Any) -> str:
    """A TOML literal for the values a spec holds (strings, numbers, booleans and lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise SweepSpecError(f"cannot record {value!r} in sweep.toml")


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_show(v) for v in value)
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def point_name(axes: dict[str, Any]) -> str:
    """``key=value,...`` of the varying axes, safe as one folder name (``/`` and control characters become _)."""
    text = ",".join(f"{k}={_show(v)}" for k, v in axes.items())
    text = re.sub(r"[/\\\x00-\x1f]", "_", text)
    if text in (".", ".."):
        text = f"_{text}"
    if len(text.encode()) > MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        text = text.encode()[:MAX_NAME - 11].decode(errors="ignore") + "-" + digest
    return text


__all__ = ["Spec", "Point", "SweepSpecError", "point_name", "RESOURCES"]
