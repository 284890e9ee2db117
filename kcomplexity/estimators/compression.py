"""Compression codelength: bits of the output of a real lossless compressor.

All compressors run without containers where the format allows it, so that
headers do not dominate small tensors: LZMA2 in raw mode, DEFLATE as a raw
stream (no gzip header). bz2 and zstd frames carry a few bytes of header.
"""
from __future__ import annotations

import bz2
import lzma
import threading
import zlib
from typing import Any


import numpy as np

from ..codecs import pco_stream, pco_values_of
from ..errors import CorruptFileError, EstimatorSettingError
from ..sources import NamedArray
from ..views import byte_planes
from .base import Estimator, Setting, register

_LITERAL = Setting(int, "0..4", lambda v: 0 <= v <= 4, optional=True)

#: inputs at least this large are compressed by zstd's multi-threaded engine in
#: jobs of ZSTD_JOB_SIZE; its output then depends on the job size, not on the
#: number of workers, so results stay reproducible across machines.
ZSTD_MT_THRESHOLD = 4 << 20
ZSTD_JOB_SIZE = 2 << 20
#: jobs re-read only 1/32 of the window from the previous job; the default
#: (whole window at high levels) spends most of the time re-indexing for ~0.01% smaller output
ZSTD_OVERLAP_LOG = 4

#: LZMA2's dictionary size at each preset 0..9 (liblzma's preset table)
LZMA_PRESET_DICT = (1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 22, 1 << 23, 1 << 23, 1 << 24, 1 << 25, 1 << 26)
#: liblzma's smallest dictionary
LZMA_MIN_DICT = 1 << 12


def lzma_dict_size(preset: int, n_bytes: int) -> int:
    """The dictionary an LZMA2 encoder at ``preset`` needs for ``n_bytes`` of input, in bytes: the preset's, or
    the power of two that holds four times the input if that is smaller.

    A dictionary at least as long as the input lets every match the preset's could reach, and liblzma then
    writes the same stream (checked against preset 9 on every tensor of all-MiniLM-L6-v2 and in the tests),
    without allocating and clearing preset 9's 64 MiB dictionary and match finder (about 670 MiB of address
    space) for each small tensor. Four times, not once: liblzma sizes its hash table from the dictionary, and
    one no larger than the input made 2 MiB of floats code 1.2x slower through hash collisions. The decoder
    keeps the preset's size, which holds any smaller one.
    """
    fitted = max(LZMA_MIN_DICT, 1 << max(4 * int(n_bytes) - 1, 1).bit_length())
    return min(LZMA_PRESET_DICT[preset], fitted)


class Compressor(Estimator):
    """Bits of ``compress(raw bytes)``; subclasses implement :meth:`compress`."""

    kind = "code length"
    thread_parallel = True

    def compress(self, data: Any) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def decompressor(self) -> Any:
        """A one-shot streaming decompressor (``decompress``, ``unused_data``): a stream ends where its own
        end marker says, so streams laid end to end (byte planes) decode one after another."""
        raise NotImplementedError  # pragma: no cover - abstract

    def decompress(self, data: bytes, max_size: int) -> tuple[bytes, bytes]:
        """(the bytes of the first stream in ``data``, what follows it); CorruptFileError on damage."""
        d = self.decompressor()
        try:
            out = d.decompress(bytes(data), max_size + 1)  # one byte over says "longer than the tensor"
        except Exception as exc:  # lzma.LZMAError, zlib.error, OSError, zstandard.ZstdError
            raise CorruptFileError(f"corrupt {self.name} stream: {exc}") from None
        if not d.eof or len(out) > max_size:
            raise CorruptFileError(f"corrupt {self.name} stream: truncated (or longer than the tensor)")
        return out, d.unused_data

    def encode(self, a: NamedArray) -> bytes:
        """The raw stream of the tensor's bytes (no dtype or shape: they are the decoder's side information)."""
        return self.compress(a.raw())

    def decode(self, data: bytes, like: NamedArray) -> NamedArray:
        out, rest = self.decompress(data, like.data.nbytes)
        if rest or len(out) != like.data.nbytes:
            raise CorruptFileError(f"corrupt {self.name} stream: its bytes do not fill the tensor")
        return NamedArray(like.name, np.frombuffer(out, like.data.dtype).reshape(like.shape).copy(), like.dtype)

    def _bits(self, a: NamedArray) -> float:
        return 8.0 * len(self.compress(a.raw()))


class LZMA(Compressor):
    SETTINGS = {"preset": Setting(int, "0..9", lambda v: 0 <= v <= 9), "extreme": Setting(bool),
                "lc": _LITERAL, "lp": _LITERAL, "pb": _LITERAL}
    name = "lzma"
    description = "raw LZMA2 stream (no .xz container), preset 9"

    def __init__(self, preset: int = 9, extreme: bool = False, lc: int | None = None,
                 lp: int | None = None, pb: int | None = None) -> None:
        v = self._validated(preset=preset, extreme=extreme, lc=lc, lp=lp, pb=pb)
        self.preset, self.extreme, self.lc, self.lp, self.pb = (v[k] for k in ("preset", "extreme", "lc", "lp", "pb"))
        filt: dict[str, Any] = {"id": lzma.FILTER_LZMA2,
                                "preset": self.preset | (lzma.PRESET_EXTREME if self.extreme else 0)}
        filt.update({k: v[k] for k in ("lc", "lp", "pb") if v[k] is not None})
        self._filters = [filt]

    def facts(self) -> dict[str, Any]:
        return {"format": "raw LZMA2"}

    def decompressor(self) -> Any:
        return lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=self._filters)

    def compress(self, data: Any) -> bytes:
        filters = [{**self._filters[0], "dict_size": lzma_dict_size(self.preset, memoryview(data).nbytes)}]
        try:
            return lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
        except lzma.LZMAError as exc:
            raise EstimatorSettingError(f"lzma rejected its settings {self.settings()}: {exc}") from None


class Zstd(Compressor):
    SETTINGS = {"level": Setting(int, "1..22", lambda v: 1 <= v <= 22),
                "threads": Setting(int, ">= -1 (-1: all cores, 0: one)", lambda v: v >= -1)}
    name = "zstd"
    description = "zstandard, level 19 (22 = ultra), multi-threaded above 4 MiB"

    def __init__(self, level: int = 19, threads: int = -1) -> None:
        v = self._validated(level=level, threads=threads)
        self.level, self.threads = v["level"], v["threads"]
        # a ZstdCompressor must not be shared between threads (score(jobs=N)): one pair per thread
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:  # sent to worker processes without its compressors
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _engines(self) -> tuple[Any, Any]:
        import zstandard

        local = self._local
        if not hasattr(local, "single"):
            local.single, local.multi = zstandard.ZstdCompressor(level=self.level), None
            if self.threads:
                # a fixed job size makes the output independent of the core count
                # while giving every core work on inputs of a few MiB
                params = zstandard.ZstdCompressionParameters.from_level(
                    self.level, threads=self.threads, job_size=ZSTD_JOB_SIZE, overlap_log=ZSTD_OVERLAP_LOG)
                local.multi = zstandard.ZstdCompressor(compression_params=params)
        return local.single, local.multi

    def facts(self) -> dict[str, Any]:
        return {"mt_threshold_bytes": ZSTD_MT_THRESHOLD, "job_bytes": ZSTD_JOB_SIZE}

    def decompressor(self) -> Any:
        return _ZstdFrames()

    def compress(self, data: Any) -> bytes:
        single, multi = self._engines()
        engine = multi if multi is not None and memoryview(data).nbytes >= ZSTD_MT_THRESHOLD else single
        return engine.compress(data)


class Gzip(Compressor):
    SETTINGS = {"level": Setting(int, "0..9", lambda v: 0 <= v <= 9)}
    name = "gzip"
    description = "DEFLATE level 9 as a raw stream (gzip without its 18-byte header/trailer)"

    def __init__(self, level: int = 9) -> None:
        self.level = self._validated(level=level)["level"]

    def facts(self) -> dict[str, Any]:
        return {"format": "raw deflate"}

    def decompressor(self) -> Any:
        return _Inflate()

    def compress(self, data: Any) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, -15, 9)
        return c.compress(data) + c.flush()


class BZ2(Compressor):
    SETTINGS = {"level": Setting(int, "1..9", lambda v: 1 <= v <= 9)}
    name = "bz2"
    description = "bzip2 level 9"

    def __init__(self, level: int = 9) -> None:
        self.level = self._validated(level=level)["level"]

    def compress(self, data: Any) -> bytes:
        return bz2.compress(data, self.level)

    def decompressor(self) -> Any:
        return bz2.BZ2Decompressor()


class ByteGrouped(Estimator):
    """Split each value into its byte planes and compress every plane on its own (ZipNN's trick).

    Exponent bytes of floats are highly repetitive while mantissa bytes are
    noise; grouping them lets the compressor model each on its own.
    """

    kind = "code length"

    def __init__(self, inner: Compressor, name: str) -> None:
        self.inner, self.name = inner, name
        self.thread_parallel = inner.thread_parallel
        self.description = f"byte planes, each compressed with {inner.name}"

    @property
    def SETTINGS(self) -> Any:  # type: ignore[override]  # its settings are the inner compressor's
        return self.inner.SETTINGS

    def settings(self) -> dict[str, Any]:
        return self.inner.settings()

    def facts(self) -> dict[str, Any]:
        return {"inner": self.inner.name, **self.inner.facts(), "grouping": "byte planes"}

    def _bits(self, a: NamedArray) -> float:
        return float(sum(self.breakdown(a).values()))

    def breakdown(self, a: NamedArray) -> dict[str, float]:
        planes = byte_planes(a)
        return {f"byte{j}": 8.0 * len(self.inner.compress(planes[j])) for j in range(planes.shape[0])}

    def encode(self, a: NamedArray) -> bytes:
        """Each byte plane's stream, laid end to end (each ends at its own end marker)."""
        planes = byte_planes(a)
        return b"".join(self.inner.compress(planes[j]) for j in range(planes.shape[0]))

    def decode(self, data: bytes, like: NamedArray) -> NamedArray:
        width, n = like.itemsize, like.numel
        planes, rest = [], bytes(data)
        for _ in range(width):
            plane, rest = self.inner.decompress(rest, n)
            if len(plane) != n:
                raise CorruptFileError(f"corrupt {self.name} code: a byte plane of the wrong length")
            planes.append(np.frombuffer(plane, np.uint8))
        if rest:
            raise CorruptFileError(f"corrupt {self.name} code: bytes after the last plane")
        # byte_planes takes the little-endian bytes of each value, least significant first
        values = np.stack(planes, axis=1).copy().view(like.data.dtype.newbyteorder("<")).reshape(like.shape)
        return NamedArray(like.name, values.astype(like.data.dtype), like.dtype)


class Pco(Estimator):
    """Registered as ``pco``: pcodec, a codec for numeric arrays (fast, near the byte-plane coders' ratio)."""

    SETTINGS = {"level": Setting(int, "0..12", lambda v: 0 <= v <= 12)}
    name = "pco"
    kind = "code length"
    description = "pcodec (numeric codec), level 8 (0..12); bfloat16 as its 16-bit patterns, 8-bit types widened"

    def __init__(self, level: int = 8) -> None:
        self.level = self._validated(level=level)["level"]

    def compress(self, a: NamedArray) -> bytes:
        """The pcodec stream of one tensor (flat); ``pcodec.standalone.simple_decompress`` inverts it."""
        return pco_stream(a, self.level)

    def _bits(self, a: NamedArray) -> float:
        return 8.0 * len(self.compress(a))

    def encode(self, a: NamedArray) -> bytes:
        """The pcodec stream of the flat values (the shape is the decoder's side information)."""
        return self.compress(a)

    def decode(self, data: bytes, like: NamedArray) -> NamedArray:
        values = pco_values_of(data, like.numel, like.dtype, "pco stream")
        return NamedArray(like.name, values.reshape(like.shape), like.dtype)


class FloatCode(Estimator):
    """Registered as ``fpc``: the float-aware code of :mod:`kcomplexity.codecs.fpc` (float32/float16/bfloat16)."""

    name = "fpc"
    kind = "code length"
    description = ("float-aware code: sign+exponent+top mantissa bits by ANS per row class, low bits raw, "
                   "rows at reduced precision detected; float32/float16/bfloat16 only")

    def encode(self, x: Any) -> bytes:
        """The code of one array or tensor (numpy, torch; bfloat16 as a torch tensor); ``len * 8`` bits."""
        from ..codecs import FpcCodec

        return FpcCodec().encode(x)

    def decode(self, data: bytes, like: NamedArray | None = None) -> NamedArray:
        """The tensor back, bit for bit (its container header holds dtype and shape; ``like`` is unused)."""
        from ..codecs import FpcCodec

        return FpcCodec().decode(data)

    def _bits(self, a: NamedArray) -> float:
        return 8.0 * len(self.encode(a))


register("lzma", LZMA)
register("zstd", Zstd)
register("gzip", Gzip)
register("bz2", BZ2)
register("lzma-bg", lambda **kw: ByteGrouped(LZMA(**kw), "lzma-bg"), LZMA.SETTINGS)
register("zstd-bg", lambda **kw: ByteGrouped(Zstd(**kw), "zstd-bg"), Zstd.SETTINGS)
register("pco", Pco)
register("fpc", FloatCode)

__all__ = ["LZMA", "Zstd", "Gzip", "BZ2", "ByteGrouped", "Compressor", "Pco", "ZSTD_MT_THRESHOLD"]


class _ZstdFrames:
    """One zstd frame, decompressed with the interface of lzma/bz2 decompressors (eof, unused_data)."""

    def __init__(self) -> None:
        import zstandard

        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return self._d.decompress(data)

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


class _Inflate:
    """A raw DEFLATE stream with the interface of lzma/bz2 decompressors."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(-15)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return self._d.decompress(data, max_size)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data
