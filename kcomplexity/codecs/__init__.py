"""The codec layer: every real code of a tensor, each a small class on one container.

A :class:`Codec` turns one tensor into bytes (``encode``), back
(``decode``), and says what it costs (``bits`` = 8 x the code's length).
Every code starts with the container header (:mod:`.container`: magic,
codec id, version, dtype, shape); entropy coding goes through :mod:`.ans`
(the one module importing constriction) and count tables and bit packing
through :mod:`.bits`. Damaged input raises
:class:`~kcomplexity.errors.CorruptFileError` in every decoder.

:func:`decode` reads any of our codes, whichever codec wrote it;
:func:`kcomplexity.pack.codec_for` gives the codec behind an estimator spec.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import CorruptFileError, NotApplicableError
from ..sources import NamedArray, as_named
from .bits import read_varint, varint
from .container import MAX_VALUES, NUMPY, Header, codec_of, read_header, storage

FLOATS = ("float32", "float16", "bfloat16", "float64")


class Codec(ABC):
    """One real code of a tensor: ``decode(encode(a))`` gives ``a`` back (exactly, or within ``bound``)."""

    name: str = ""
    lossless: bool = True

    def takes(self, dtype: str) -> bool:
        """Whether this code applies to tensors of ``dtype`` (else a caller uses a lossless fallback)."""
        return True

    @abstractmethod
    def encode(self, x: Any) -> bytes:
        """The code of one array or tensor; ``8 * len(result)`` bits."""

    @abstractmethod
    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        """The tensor back in its own dtype (bfloat16 as its uint16 patterns); refuses codes claiming more
        than ``max_values`` values."""

    def bits(self, x: Any) -> int:
        """Length of :meth:`encode` of ``x``, in bits."""
        return 8 * len(self.encode(x))

    def encode_measured(self, x: Any) -> tuple[bytes, dict[str, float] | None]:
        """:meth:`encode` with the distortion the code buys (``mse``, ``max_abs_err``; None for lossless codes)."""
        return self.encode(x), None

    def spec(self) -> str:
        """The estimator spec this codec stands for (``quant:rel=0.1``)."""
        return self.name


class FpcCodec(Codec):
    """The float-aware lossless code of :mod:`.fpc` (float32, float16, bfloat16)."""

    name = "fpc"

    def takes(self, dtype: str) -> bool:
        return dtype in ("float32", "float16", "bfloat16")

    def encode(self, x: Any) -> bytes:
        from . import fpc

        return fpc.encode(x)

    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        from . import fpc

        head, _ = read_header(data, "fpc", (fpc.VERSION,), max_values)
        return NamedArray("tensor", storage(fpc.decode(data, max_values), head.dtype), head.dtype)


class _SteppedCodec(Codec):
    """A lossy code on a quantisation step whose encoder hands back its distortion (a ``QuantizedCode``)."""

    lossless = False

    @abstractmethod
    def _code(self, x: Any) -> Any:
        """The ``QuantizedCode`` of one tensor."""

    def encode(self, x: Any) -> bytes:
        return self._code(x).data

    def encode_measured(self, x: Any) -> tuple[bytes, dict[str, float]]:
        from ..distortion import summary

        code = self._code(x)
        return code.data, summary(code.sse, code.numel, code.max_abs_err)

    def _step_spec(self) -> str:
        """``NAME:rel=R`` or ``NAME:delta=D``: the start of :meth:`spec`."""
        return f"{self.name}:rel={self.rel!r}" if self.rel is not None else f"{self.name}:delta={self.delta!r}"


class QuantCodec(_SteppedCodec):
    """Uniform quantisation + entropy code (:mod:`.quant`): every value back within ``step / 2``."""

    name = "quant"

    def __init__(self, rel: float | None = None, delta: float | None = None, rdoq: float = 0.0) -> None:
        from .quant import check_precision

        self.rel, self.delta = check_precision(rel, delta)
        self.rdoq = float(rdoq)  # rate-distortion optimised levels (errors may then exceed step/2)

    def _code(self, x: Any) -> Any:
        from .quant import code_quantized

        return code_quantized(x, rel=self.rel, delta=self.delta, rdoq=self.rdoq)

    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        from .quant import VERSION, decode_quantized

        head, _ = read_header(data, "quant", (VERSION,), max_values)
        return NamedArray("tensor", storage(decode_quantized(data, max_values), head.dtype), head.dtype)

    def spec(self) -> str:
        return self._step_spec() + (f":rdoq={self.rdoq!r}" if self.rdoq else "")


class TcqCodec(_SteppedCodec):
    """Trellis-coded quantisation + context-modelled ANS (:mod:`.tcq`): every value back within ``2 step``."""

    name = "tcq"

    def __init__(self, rel: float | None = None, delta: float | None = None, lam: float | None = None) -> None:
        from .quant import check_precision
        from .tcq import DEFAULT_LAM

        self.rel, self.delta = check_precision(rel, delta)
        self.lam = DEFAULT_LAM if lam is None else float(lam)  # the search's weight of a bit in squared steps

    def _code(self, x: Any) -> Any:
        from .tcq import code_tcq

        return code_tcq(x, rel=self.rel, delta=self.delta, lam=self.lam)

    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        from .tcq import decode_tcq

        head, _ = read_header(data, codec_of(data), (1,), max_values)  # integer tensors carry an exact quant code
        return NamedArray("tensor", storage(decode_tcq(data, max_values), head.dtype), head.dtype)

    def spec(self) -> str:
        return self._step_spec() + f":lam={self.lam!r}"


class ZstdCodec(Codec):
    """zstd of the tensor's bytes: the general lossless code, for any dtype (the fallback of other codes)."""

    name = "zstd"
    VERSION = 1

    def __init__(self, level: int = 19) -> None:
        self.level = int(level)

    def encode(self, x: Any) -> bytes:
        import zstandard

        a = as_named(x, allow_empty=True)
        head = Header("zstd", self.VERSION, a.dtype, a.shape).to_bytes()
        return head + zstandard.ZstdCompressor(level=self.level).compress(a.raw())

    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        head, pos = read_header(data, "zstd", (self.VERSION,), max_values)
        dtype = np.dtype(NUMPY.get(head.dtype, head.dtype))
        size = head.numel * dtype.itemsize
        raw = zstd_decompress(data[pos:], size, "zstd code")
        if len(raw) != size:
            raise CorruptFileError("corrupt zstd code: its bytes do not fill the shape")
        return NamedArray("tensor", np.frombuffer(raw, dtype=dtype).reshape(head.shape), head.dtype)

    def spec(self) -> str:
        return f"zstd:level={self.level}"


def zstd_decompress(data: bytes | memoryview, limit: int, what: str) -> bytearray:
    """The content of one zstd frame, refused (CorruptFileError naming ``what``) once it passes ``limit`` bytes.

    Read through a stream so memory follows the output, never what the frame claims: zstandard's one-shot
    ``max_output_size=0`` means "unlimited", and a frame without a content size would be inflated whole.
    """
    import zstandard

    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(bytes(data), read_across_frames=False) as reader:
            while len(out) <= limit:
                chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise CorruptFileError(f"corrupt {what}: {exc}") from None
    if len(out) > limit:
        raise CorruptFileError(f"corrupt {what}: it holds more than the {limit:,} bytes it may")
    return out


def pco_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of the values :func:`pco_values` gives pcodec for a tensor of ``dtype``."""
    storage_dtype = np.dtype(NUMPY.get(dtype, dtype))
    if dtype == "bfloat16":
        return np.dtype(np.uint16)
    if storage_dtype.itemsize == 1:
        return np.dtype(np.int16 if storage_dtype.kind == "i" else np.uint16)
    return storage_dtype


def pco_values(a: NamedArray) -> np.ndarray:
    """The flat array pcodec codes exactly: bfloat16 as uint16 patterns, 8-bit and bool types widened to 16 bits."""
    data = a.data.reshape(-1)
    if a.dtype == "bfloat16":
        return data.view(np.uint16)
    if data.dtype.itemsize == 1:
        return data.astype(np.int16 if data.dtype.kind == "i" else np.uint16)
    return data


def pco_stream(a: NamedArray, level: int) -> bytes:
    """The pcodec stream of a tensor's flat values (:func:`pco_values`); :func:`pco_values_of` inverts it."""
    import pcodec

    return pcodec.standalone.simple_compress(pco_values(a), pcodec.ChunkConfig(compression_level=level))


def pco_values_of(stream: bytes, numel: int, dtype: str, what: str) -> np.ndarray:
    """The flat values of a pcodec stream in ``dtype``'s storage (CorruptFileError naming ``what`` unless it
    holds exactly ``numel`` of them, of the number type ``dtype`` is coded as).

    Decoded into an array of ``numel`` values (plus one, to see a stream that holds more), so memory follows
    the tensor the header names, not what the stream claims.
    """
    import pcodec

    dst = np.empty(numel + 1, dtype=pco_dtype(dtype))
    try:
        progress = pcodec.standalone.simple_decompress_into(bytes(stream), dst)
    except Exception as exc:  # pcodec raises RuntimeError on damaged streams, TypeError on a wrong number type
        raise CorruptFileError(f"corrupt {what}: {exc}") from None
    if progress.n_processed != numel or not progress.finished:
        raise CorruptFileError(f"corrupt {what}: its values do not fill the tensor")
    out_dtype = np.dtype(NUMPY.get(dtype, dtype))
    values = dst[:numel]
    if out_dtype.itemsize == 1 and values.size and out_dtype.kind in "iu":  # 8-bit types travel widened
        info = np.iinfo(out_dtype)
        if values.min() < info.min or values.max() > info.max:
            raise CorruptFileError(f"corrupt {what}: values outside {dtype}'s range (a code of a wider type)")
    return values.astype(out_dtype, copy=False)  # bfloat16 kept as patterns, 8-bit narrowed


class PcoCodec(Codec):
    """pcodec (numeric codec) of the flat values; bfloat16 as its 16-bit patterns, 8-bit types widened."""

    name = "pco"
    VERSION = 1

    def __init__(self, level: int = 8) -> None:
        self.level = int(level)

    def takes(self, dtype: str) -> bool:
        return dtype != "bool"

    def encode(self, x: Any) -> bytes:
        a = as_named(x, allow_empty=True)
        if not self.takes(a.dtype):
            raise NotApplicableError(f"pco codes numbers, not {a.dtype}")
        return Header("pco", self.VERSION, a.dtype, a.shape).to_bytes() + pco_stream(a, self.level)

    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        head, pos = read_header(data, "pco", (self.VERSION,), max_values)
        values = pco_values_of(data[pos:], head.numel, head.dtype, "pco code")
        return NamedArray("tensor", values.reshape(head.shape), head.dtype)

    def spec(self) -> str:
        return f"pco:level={self.level}"


class MosaicCodec(Codec):
    """The exact mosaic code of ``mdl`` (motif table + block indices, :mod:`.mosaic`) of one float tensor."""

    name = "mosaic"
    VERSION = 1

    def __init__(self, s: int = 2) -> None:
        self.s = int(s)

    def takes(self, dtype: str) -> bool:
        return dtype in FLOATS

    def encode(self, x: Any) -> bytes:
        from . import mosaic

        a = as_named(x)
        return mosaic.encode(mosaic.tensor_plan([a], self.s),
                             prefix=Header("mosaic", self.VERSION, a.dtype, a.shape).to_bytes() + varint(self.s))

    def decode(self, data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
        from . import mosaic

        head, pos = read_header(data, "mosaic", (self.VERSION,), max_values)
        try:
            s, pos = read_varint(data, pos)
        except IndexError:
            raise CorruptFileError("corrupt mosaic code: truncated") from None
        patterns, index, s2, dtype = mosaic.decode(bytes(data[pos:]), max_values + s)
        n = head.numel
        if dtype != head.dtype or s2 != s or index.size * s != -(-n // s) * s:
            raise CorruptFileError("corrupt mosaic code: it does not match its header")
        flat = patterns[index].reshape(-1)[:n]  # bit patterns: bfloat16 is kept as its own, not widened
        values = flat.astype(np.uint16) if dtype == "bfloat16" else mosaic.values(flat, dtype)
        return NamedArray("tensor", np.ascontiguousarray(values).reshape(head.shape), head.dtype)

    def spec(self) -> str:
        return f"mdl:s={self.s}"


_DECODERS: dict[str, type[Codec]] = {"fpc": FpcCodec, "zstd": ZstdCodec, "pco": PcoCodec, "mosaic": MosaicCodec}


def decode(data: bytes, max_values: int = MAX_VALUES) -> NamedArray:
    """Any of our codes back to its tensor, whichever codec wrote it (the header says)."""
    name = codec_of(data)
    if name in ("quant", "tcq"):  # the step is in the code, not the codec
        return (QuantCodec if name == "quant" else TcqCodec)(rel=1.0).decode(data, max_values)
    return _DECODERS[name]().decode(data, max_values)


__all__ = ["Codec", "FpcCodec", "QuantCodec", "TcqCodec", "ZstdCodec", "PcoCodec", "MosaicCodec", "decode", "pco_values", "pco_stream", "pco_values_of",
           "pco_dtype", "zstd_decompress",
           "storage", "MAX_VALUES"]
