"""The header every standalone code starts with: magic, codec id and version, dtype, shape.

Layout (integers as LEB128 varints)::

    b"KC" codec-id version dtype-code ndim dims...

The codec's own fields and payload follow. One dtype table and one decode
limit (``max_values``) serve every codec: a header claiming more values
than the limit is refused before anything is allocated, since a constant
tensor of any size codes to a few bytes and the claim alone could exhaust
memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptFileError
from .bits import read_varint, varint

MAGIC = b"KC"
#: every dtype a code can restore, by code (the index is written)
DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64",
          "uint8", "uint16", "uint32", "uint64", "bool")
#: codec ids, by name (the index is written); a new codec appends its name
CODECS = ("quant", "fpc", "mosaic", "zstd", "pco", "tcq")
#: the default decode limit: codes claiming more values are refused unless the caller raises it (1 GiB of float32)
MAX_VALUES = 1 << 28
#: the most dimensions a code may have (numpy's own limit), the same for encoders and decoders
MAX_NDIM = 64


#: numpy storage of the dtypes numpy lacks or names differently (bfloat16 as its 16-bit patterns)
NUMPY = {"bfloat16": np.uint16, "bool": np.bool_}


def storage(values: Any, dtype: str) -> np.ndarray:
    """Decoded values (numpy, or a torch bfloat16 tensor) as ``dtype``'s storage array (bfloat16: uint16
    patterns, rounded to nearest even from float32)."""
    if dtype == "bfloat16":
        if type(values).__module__.startswith("torch"):
            import torch

            return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return np.asarray(values).astype(NUMPY.get(dtype, dtype), copy=False)


@dataclass(frozen=True)
class Header:
    codec: str
    version: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_bytes(self) -> bytes:
        if len(self.shape) > MAX_NDIM:
            raise CorruptFileError(f"a code holds at most {MAX_NDIM} dimensions, not {len(self.shape)}")
        return (MAGIC + bytes([CODECS.index(self.codec), self.version, DTYPES.index(self.dtype)])
                + varint(len(self.shape)) + b"".join(varint(int(d)) for d in self.shape))


def read_header(buf: memoryview | bytes, codec: str, versions: tuple[int, ...],
                max_values: int = MAX_VALUES) -> tuple[Header, int]:
    """The header of a ``codec`` code and the position after it; CorruptFileError for anything else."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise CorruptFileError(f"a {codec} code is bytes, got {type(buf).__name__}")
    what = f"{codec} code"
    try:
        if bytes(buf[:2]) != MAGIC:
            raise CorruptFileError(f"not a {what} (bad magic)")
        if buf[2] >= len(CODECS) or CODECS[buf[2]] != codec:
            raise CorruptFileError(f"not a {what}: it holds a "
                                   f"{CODECS[buf[2]] if buf[2] < len(CODECS) else 'unknown'} code")
        if buf[3] not in versions:
            raise CorruptFileError(f"{what} version {buf[3]} is not one this decoder reads ({versions})")
        if buf[4] >= len(DTYPES):
            raise CorruptFileError(f"corrupt {what}: unknown dtype")
        ndim, pos = read_varint(buf, 5)
        if ndim > MAX_NDIM:
            raise CorruptFileError(f"corrupt {what}: {ndim} dimensions")
        shape = []
        for _ in range(ndim):
            d, pos = read_varint(buf, pos)
            shape.append(d)
    except IndexError:
        raise CorruptFileError(f"corrupt {what}: truncated header") from None
    head = Header(codec, buf[3], DTYPES[buf[4]], tuple(shape))
    if head.numel > max_values:
        raise CorruptFileError(f"{what} claims {head.numel:,} values, more than max_values={max_values:,} "
                               "(pass max_values to decode more)")
    return head, pos


def codec_of(data: bytes | memoryview) -> str:
    """The name of the codec a standalone code was written by (CorruptFileError if it is not one of ours)."""
    if len(data) < 3 or bytes(data[:2]) != MAGIC or data[2] >= len(CODECS):
        raise CorruptFileError("not a kcomplexity code (bad magic or codec id)")
    return CODECS[data[2]]


__all__ = ["Header", "read_header", "codec_of", "storage", "NUMPY", "DTYPES", "CODECS", "MAX_VALUES", "MAX_NDIM"]
