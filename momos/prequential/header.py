"""The side information at the head of a prequential code: everything a decoder needs besides the inputs.

The labels can only be decoded by retraining the same networks the same
way, so the data set, the models, the seed, the chunk boundaries and every
fitting option are part of the message and are counted in its bits. They
are written compactly (integers as LEB128 varints, text as a length and
UTF-8)::

    version data-set  #models model...  seed  limit+1 (0: all)
    chunks: a named schedule's index (< 8: 0 doubling from 64, 1 the same
            with the last chunk split, 2 growing by sqrt 2, 3 sqrt 2 then
            doubling) | 8 + count, then each boundary less the last
    options: a bitmap of the TrainOptions fields that differ from their
             defaults (field order), then, for those that are not bools
             (a set bool means True), the value: int as varint, float as
             its shortest repr text

A named preset (:mod:`momos.prequential.presets`) fixes models, chunks and
options, so its code says only which one, as a model count of 0 and the
preset's index, the way a model is named rather than described::

    version data-set  0 preset-index  seed  limit+1

Version 2 ends every header with the number of labels (varint) and the
CRC-32 of the labels (4 bytes, little-endian, over their int64 values), so
a decoder refuses a header whose limit or data set gives another count
before training anything, and a damaged stream that still decodes to labels
is caught. A decoder reads version 1 (without them) as before.

About 25 bytes, 16 for MNIST under a preset, against about 4,000 bits of labels.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import zlib

import numpy as np

from kcomplexity.checks import seed as check_seed
from kcomplexity.codecs.bits import read_varint, varint

from ..errors import PrequentialError
from .options import TrainOptions

VERSION = 2
#: versions this decoder reads (1: no label count or checksum)
VERSIONS = (1, 2)
#: longest data-set or model name a header holds
MAX_NAME = 64
#: chunk fields below this name a schedule (:data:`momos.prequential.code.SCHEDULES`); from it on, a count follows
NAMED = 8


def labels_crc(labels: np.ndarray) -> int:
    """The CRC-32 a header carries of the labels it codes (over their int64 little-endian values)."""
    return zlib.crc32(np.ascontiguousarray(labels, dtype="<i8").tobytes())


def _trailer(labels: np.ndarray) -> bytes:
    return varint(int(np.asarray(labels).size)) + labels_crc(labels).to_bytes(4, "little")


def encode_preset(data: str, preset: int, seed: int, limit: int | None, labels: np.ndarray) -> bytes:
    """The header of a code of ``labels`` made under the named preset of index ``preset``, which sets models,
    chunks and options."""
    return (bytes([VERSION]) + _text(data) + varint(0) + varint(preset) + varint(seed) + _limit(limit)
            + _trailer(labels))


def encode(data: str, models: list[str], seed: int, limit: int | None, bounds: int | list[int],
           opts: TrainOptions, labels: np.ndarray) -> bytes:
    """The header's bytes (``8 * len`` bits of the code) of a code of ``labels``; ``bounds`` is a named
    schedule's index or the boundaries themselves."""
    if not models:
        raise PrequentialError("a prequential code needs at least one model")
    out = bytearray([VERSION]) + _text(data) + varint(len(models))
    for name in models:
        out += _text(name)
    out += varint(seed) + _limit(limit)
    if isinstance(bounds, int):
        if not 0 <= bounds < NAMED:
            raise PrequentialError(f"no chunk schedule {bounds}")
        out += varint(bounds)
    else:
        out += varint(NAMED + len(bounds))
        last = 0
        for b in bounds:
            out += varint(b - last)
            last = b
    defaults = TrainOptions.defaults()
    fields = dataclasses.fields(TrainOptions)
    changed = [getattr(opts, f.name) != defaults[f.name] for f in fields]
    out += int("".join("1" if c else "0" for c in reversed(changed)) or "0", 2).to_bytes(-(-len(fields) // 8), "little")
    for f, c in zip(fields, changed):
        value = getattr(opts, f.name)
        if not c or isinstance(value, bool):
            continue
        out += varint(value) if isinstance(value, int) else _text(repr(value))
    return bytes(out) + _trailer(labels)


def decode(buf: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """The side information (data, models, seed, limit, chunks: a schedule's index or the boundaries,
    options; or data, preset index, seed, limit), with ``n`` and ``crc`` of the labels (None in version 1),
    and the position after it; PrequentialError for a damaged header. Every value is checked as the encoder
    checks it (the seed's range, the options' bounds), so a header no encoder writes is refused."""
    buf = memoryview(bytes(buf))
    try:
        if buf[0] not in VERSIONS:
            raise PrequentialError(f"prequential code version {buf[0]} is not one this decoder reads "
                                   f"({', '.join(map(str, VERSIONS))})")
        version = buf[0]
        data, pos = _read_text(buf, 1)
        count, pos = read_varint(buf, pos)
        if count == 0:
            preset, pos = read_varint(buf, pos)
            seed, pos = read_varint(buf, pos)
            limit, pos = read_varint(buf, pos)
            side: dict[str, Any] = {"data": data, "preset": preset, "seed": _seed(seed),
                                    "limit": limit - 1 if limit else None}
            return _read_trailer(buf, pos, version, side)
        if not 1 <= count <= 16:
            raise PrequentialError("corrupt prequential code: bad model count")
        models = []
        for _ in range(count):
            name, pos = _read_text(buf, pos)
            models.append(name)
        seed, pos = read_varint(buf, pos)
        limit, pos = read_varint(buf, pos)
        field, pos = read_varint(buf, pos)
        bounds: int | list[int] = field
        if field >= NAMED:
            bounds, last = [], 0
            for _ in range(field - NAMED):
                step, pos = read_varint(buf, pos)
                last += step
                bounds.append(last)
        fields = dataclasses.fields(TrainOptions)
        width = -(-len(fields) // 8)
        if len(buf) < pos + width:
            raise IndexError
        bitmap = int.from_bytes(bytes(buf[pos:pos + width]), "little")
        pos += width
        values = TrainOptions.defaults()
        for i, f in enumerate(fields):
            if not bitmap >> i & 1:
                continue
            default = values[f.name]
            if isinstance(default, bool):
                values[f.name] = not default
            elif isinstance(default, int):
                values[f.name], pos = read_varint(buf, pos)
            else:
                text, pos = _read_text(buf, pos)
                values[f.name] = float(text)
        opts = TrainOptions(**values)
        side = {"data": data, "models": models, "seed": _seed(seed), "limit": limit - 1 if limit else None,
                "chunks": bounds, "options": opts}
        return _read_trailer(buf, pos, version, side)
    except PrequentialError as exc:  # a value the encoder would refuse: say which
        raise PrequentialError(str(exc) if "corrupt" in str(exc) else f"corrupt prequential code: {exc}") from None
    except (IndexError, ValueError, UnicodeDecodeError):
        raise PrequentialError("corrupt prequential code: its header is damaged") from None


def _seed(value: int) -> int:
    return check_seed(value, lambda why: PrequentialError(f"corrupt prequential code: {why}"))


def _read_trailer(buf: memoryview, pos: int, version: int, side: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``side`` with the label count and checksum of a version-2 header (None for version 1)."""
    if version == 1:
        return {**side, "n": None, "crc": None}, pos
    n, pos = read_varint(buf, pos)
    if len(buf) < pos + 4:
        raise IndexError
    return {**side, "n": n, "crc": int.from_bytes(bytes(buf[pos:pos + 4]), "little")}, pos + 4


def _limit(limit: int | None) -> bytes:
    return varint(0 if limit is None else limit + 1)


def _text(s: str) -> bytes:
    raw = s.encode()
    if len(raw) > MAX_NAME:
        raise PrequentialError(f"name {s!r} is longer than {MAX_NAME} bytes")
    return varint(len(raw)) + raw


def _read_text(buf: memoryview, pos: int) -> tuple[str, int]:
    size, pos = read_varint(buf, pos)
    if size > MAX_NAME or pos + size > len(buf):
        raise PrequentialError("corrupt prequential code: its header is damaged")
    return bytes(buf[pos:pos + size]).decode(), pos + size


__all__ = ["encode", "encode_preset", "decode", "VERSION"]
