"""A real code of weights at a stated precision: uniform scalar quantisation + an entropy code.

Each tensor is quantised on its own grid: symbol ``i = round(x / step)``,
decoded value ``i * step``, so every value comes back within ``step / 2``
(plus the rounding of the decoded value to its dtype). The step is given
absolutely (``delta``) or relative to the tensor's RMS (``rel``:
``step = rel * RMS``). Integer and bool tensors are coded exactly (step 1).

The integer symbols are then coded by whichever of these real codes is
shortest for this tensor (the header says which):

* ``const``     every symbol equal: nothing beyond the header;
* ``order0``    the symbol counts are sent (zstd of fixed-width integers),
                then an ANS code driven by those counts (constriction);
* ``gaussian``  / ``laplace``: a discretised distribution whose two float64
                parameters are sent, then an ANS code (constriction);
* ``zstd``      zstd of the symbols as fixed-width little-endian integers
                (wins on tiled or repetitive tensors, which order-0 codes miss).

Layout (integers as LEB128 varints; ``zz`` = zig-zag signed): the
container header (:mod:`kcomplexity.codecs.container`), then::

    method step(float64 LE) zz(lo) (hi - lo) [method fields] payload

:func:`encode_quantized` returns the bytes and :func:`decode_quantized`
inverts them; ``len(data) * 8`` is the code length in bits.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptFileError, EstimatorSettingError
from ..sources import NamedArray, as_named
from . import ans
from .bits import bincount, pack_fixed, pack_tables, packed_size, read_varint, unpack_fixed, unpack_tables, unzigzag, varint, zigzag
from .container import MAX_VALUES, Header, read_header, storage

VERSION = 1
METHODS = ("const", "order0", "gaussian", "laplace", "zstd")
#: wider alphabets than the ANS models take fall back to zstd
MAX_ANS_ALPHABET = ans.MAX_ALPHABET
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class QuantizedCode:
    """One tensor's quantised code and what it buys."""

    data: bytes
    step: float          #: quantisation step (1 for integer tensors)
    method: str          #: which entropy code won
    numel: int
    sse: float           #: sum of squared errors of the decoded values
    max_abs_err: float   #: largest |decoded - original|
    signal: float        #: sum of squared original values (for SNR)

    @property
    def bits(self) -> int:
        """Length of the code in bits: ``len(data) * 8``."""
        return 8 * len(self.data)

    @property
    def mse(self) -> float:
        return self.sse / self.numel


def check_precision(rel: Any = None, delta: Any = None) -> tuple[float | None, float | None]:
    """Validate a precision: exactly one of ``rel`` (step / RMS) or ``delta`` (absolute step), each finite and > 0."""
    if (rel is None) == (delta is None):
        raise EstimatorSettingError("give exactly one precision: rel (step as a fraction of the tensor's RMS) "
                                    "or delta (an absolute step)")
    name, value = ("rel", rel) if rel is not None else ("delta", delta)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise EstimatorSettingError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise EstimatorSettingError(f"{name} must be finite and > 0, got {value}")
    return (value, None) if name == "rel" else (None, value)


def quantize(a: NamedArray, rel: float | None = None, delta: float | None = None, rdoq: float = 0.0
             ) -> tuple[np.ndarray, float, np.ndarray]:
    """(symbols, step, the flat values) of one tensor; integers and bools get step 1 and stay exact.

    Float symbols are int32 when every one lies within 2^30 (differences of two then fit too), else int64; they
    are computed a block at a time from the values, so no float64 copy of the tensor outlives the step.
    ``rdoq`` > 0 chooses each float value's symbol by rate-distortion optimisation (:func:`rdo_symbols`)
    instead of rounding to the nearest level; the decoder is the same."""
    values = a.values()
    if a.dtype == "bool" or values.dtype.kind in "iu":
        if values.dtype == np.uint64 and values.size and int(values.max()) > np.iinfo(np.int64).max:
            raise EstimatorSettingError(f"tensor '{a.name}' holds uint64 values beyond the int64 range")
        sym = values.reshape(-1).astype(np.int64)
        return sym, 1.0, sym
    flat = values.reshape(-1)
    step = float_step(a.name, flat, rel, delta)
    top = float(np.rint(float(np.abs(flat).max()) / step)) if flat.size else 0.0
    if top >= 2.0 ** 62:
        raise EstimatorSettingError(f"step {step:g} is too fine for tensor '{a.name}' (symbols exceed 2**62)")
    sym = np.empty(flat.size, dtype=np.int32 if top < 2.0 ** 30 else np.int64)
    for lo in range(0, flat.size, _CHUNK):
        sym[lo:lo + _CHUNK] = np.rint(flat[lo:lo + _CHUNK].astype(np.float64) / step)
    if rdoq > 0:
        sym = rdo_symbols(flat.astype(np.float64) / step, sym, rdoq)
    return sym, float(step), flat


def float_step(name: str, x: np.ndarray, rel: float | None, delta: float | None) -> float:
    """The step of a float tensor's flat values ``x``: ``delta``, or ``rel`` x their RMS in float64 (1 for an
    all-zero tensor, which any step codes exactly); EstimatorSettingError for NaN/Inf, which no step quantises."""
    if not np.isfinite(x).all():
        raise EstimatorSettingError(f"tensor '{name}' holds NaN/Inf, which no finite step can quantise")
    if delta is not None:
        step = delta
    else:
        squares = np.array(x, dtype=np.float64)  # squared in place: one float64 copy, the same mean as x * x
        squares *= squares
        step = rel * float(np.sqrt(np.mean(squares)))
        del squares
    return step if step != 0.0 else 1.0


def restored(rec: np.ndarray, dtype: str) -> np.ndarray:
    """Decoded values as float64, as the decoder hands them back in ``dtype``: float32 for float32/16 and
    bfloat16, then rounded to float16/bfloat16 storage, so a distortion is measured on what a user gets."""
    if dtype in ("float32", "float16", "bfloat16"):
        rec = np.asarray(rec, dtype=np.float32)
        if dtype != "float32":
            rec = NamedArray("tensor", storage(rec, dtype), dtype).values()
    return np.asarray(rec, dtype=np.float64)


#: passes of rate-distortion optimised quantisation: each re-estimates the symbol histogram it prices by
RDO_PASSES = 3


def rdo_symbols(scaled: np.ndarray, nearest: np.ndarray, lam: float) -> np.ndarray:
    """Symbols minimising (x/step - s)^2 + lam * (-log2 p(s)) over the nearest level and its neighbour toward
    zero, p being the symbols' own order-0 histogram (re-estimated each pass). ``lam`` weighs a bit against a
    squared step; a value may then move up to 1.5 steps, and the codes' max_abs_err says by how much."""
    other = nearest - np.sign(nearest)  # the neighbour toward zero: more probable for a peaked distribution
    sym = nearest
    if not nearest.size:
        return sym
    # the neighbour toward zero can lie above every nearest level (all levels negative) or below them all
    lo, hi = int(min(nearest.min(), other.min())), int(max(nearest.max(), other.max()))
    for _ in range(RDO_PASSES):
        counts = np.bincount(sym - lo, minlength=hi - lo + 1).astype(np.float64) + 0.5
        rate = -np.log2(counts / counts.sum())
        cost_near = (scaled - nearest) ** 2 + lam * rate[nearest - lo]
        cost_other = (scaled - other) ** 2 + lam * rate[other - lo]
        sym = np.where(cost_other < cost_near, other, nearest)
    return sym


def encode_quantized(x: Any, rel: float | None = None, delta: float | None = None, rdoq: float = 0.0) -> bytes:
    """Quantise one array or tensor (step = ``delta`` or ``rel`` x its RMS) and entropy-code it; returns the code.

    ``len(result) * 8`` is the code length in bits; :func:`decode_quantized`
    rebuilds every value within step/2.
    """
    return code_quantized(x, rel=rel, delta=delta, rdoq=rdoq).data


def code_quantized(x: Any, rel: float | None = None, delta: float | None = None, rdoq: float = 0.0
                   ) -> QuantizedCode:
    """Like :func:`encode_quantized`, with the step, the winning method and the distortion.

    ``rdoq`` > 0: rate-distortion optimised symbols (same decoder; errors may exceed step/2)."""
    rel, delta = check_precision(rel, delta)
    a = as_named(x)
    sym, step, values = quantize(a, rel, delta, rdoq)
    method, body = _entropy_code(sym)
    head = Header("quant", VERSION, a.dtype, tuple(int(d) for d in a.shape)).to_bytes()
    data = head + bytes([METHODS.index(method)]) + struct.pack("<d", step) + body
    sse, max_abs_err, signal = _distortion(sym, step, values, a.dtype)
    return QuantizedCode(data=data, step=step, method=method, numel=int(sym.size), sse=sse,
                         max_abs_err=max_abs_err, signal=signal)


def _distortion(sym: np.ndarray, step: float, values: np.ndarray, dtype: str) -> tuple[float, float, float]:
    """(sum of squared errors, largest error, sum of squared values) of the decoded values, in float64, a block
    of _CHUNK values at a time (one block: exactly the sums over the whole tensor)."""
    sse = max_abs_err = signal = 0.0
    for lo in range(0, sym.size, _CHUNK):
        orig = values[lo:lo + _CHUNK].astype(np.float64)
        err = restored(_reconstruct(sym[lo:lo + _CHUNK], step, dtype), dtype) - orig
        sse += float(np.dot(err, err))
        max_abs_err = max(max_abs_err, float(np.abs(err).max()) if err.size else 0.0)
        signal += float(np.dot(orig, orig))
    return sse, max_abs_err, signal


def reconstruct(x: Any, rel: float | None = None, delta: float | None = None, rdoq: float = 0.0) -> np.ndarray:
    """What :func:`decode_quantized` returns for ``x`` at this precision, without building the code."""
    rel, delta = check_precision(rel, delta)
    a = as_named(x)
    sym, step, _ = quantize(a, rel, delta, rdoq)
    return _reconstruct(sym, step, a.dtype).reshape(a.shape)


def decode_quantized(data: bytes, max_values: int = MAX_VALUES) -> np.ndarray:
    """Inverse of :func:`encode_quantized`: float32 values in the original shape.

    float64 tensors come back as float64 and integer/bool tensors exactly in
    their own dtype. A code claiming more than ``max_values`` values is
    refused before anything is allocated (CorruptFileError).
    """
    head, pos = read_header(data, "quant", (VERSION,), max_values)
    buf = memoryview(bytes(data))
    n = head.numel
    try:
        if n == 0:
            raise CorruptFileError("corrupt quant code: bad shape")
        if buf[pos] >= len(METHODS):
            raise CorruptFileError("corrupt quant code: unknown method")
        method = METHODS[buf[pos]]
        (step,) = struct.unpack_from("<d", buf, pos + 1)
        if not math.isfinite(step) or step <= 0:
            raise CorruptFileError("corrupt quant code: bad step")
        sym = _entropy_decode(method, buf, pos + 9, n, symbol_range(head.dtype, step))
    except (IndexError, struct.error):
        raise CorruptFileError("corrupt quant code: truncated") from None
    return _reconstruct(sym, step, head.dtype).reshape(head.shape)


#: values reconstructed at a time, so no float64 copy of a whole tensor is ever held beside its symbols
_CHUNK = 1 << 22


def _reconstruct(sym: np.ndarray, step: float, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return sym.astype(np.bool_)
    if dtype.startswith(("int", "uint")):
        return sym.astype(dtype)
    out = np.empty(sym.shape, dtype=np.float64 if dtype == "float64" else np.float32)
    flat_in, flat_out = sym.reshape(-1), out.reshape(-1)
    for lo in range(0, flat_in.size, _CHUNK):
        flat_out[lo:lo + _CHUNK] = flat_in[lo:lo + _CHUNK] * step
    return out


# ---------------------------------------------------------------- per-row steps
ROWS_MAGIC = b"KR"
#: row levels: a row at level k is quantised on step x 2^k
ROW_LEVELS = 4


def code_rows(x: Any, step: float, levels: np.ndarray) -> QuantizedCode:
    """A matrix (or any tensor, by its first axis) quantised row by row on ``step x 2^levels[row]``.

    Layout: ``b"KR"`` ndim dims (varints), the levels (2 bits a row), then
    for each level 0..3 the length (varint) and the quant code of its rows
    in order (empty when no row has that level). :func:`decode_rows` inverts it."""
    a = as_named(x)
    values, rows = _rows(a)
    levels = np.asarray(levels, dtype=np.int64)
    if levels.shape != (rows.shape[0],) or levels.min() < 0 or levels.max() >= ROW_LEVELS:
        raise EstimatorSettingError(f"levels must hold one value in 0..{ROW_LEVELS - 1} per row")
    out = bytearray(ROWS_MAGIC + varint(values.ndim) + b"".join(varint(int(d)) for d in values.shape))
    out += pack_fixed(levels.astype(np.uint8), 2)
    sse = err_max = 0.0
    for k in range(ROW_LEVELS):
        part = rows[levels == k]
        if not part.size:
            out += varint(0)
            continue
        code = code_quantized(_subset(a, part), delta=step * 2 ** k)
        out += varint(len(code.data)) + code.data
        sse, err_max = sse + code.sse, max(err_max, code.max_abs_err)
    orig = values.reshape(-1).astype(np.float64)
    return QuantizedCode(data=bytes(out), step=float(step), method="rows", numel=int(orig.size), sse=sse,
                         max_abs_err=err_max, signal=float(np.dot(orig, orig)))


def decode_rows(data: bytes, max_values: int = MAX_VALUES) -> np.ndarray:
    """Inverse of :func:`code_rows`: the tensor's values (float32, float64 for float64) in its shape."""
    buf = memoryview(bytes(data))
    try:
        if bytes(buf[:2]) != ROWS_MAGIC:
            raise CorruptFileError("not a row-step code (bad magic)")
        ndim, pos = read_varint(buf, 2)
        if ndim > 64:
            raise CorruptFileError("corrupt row-step code: bad shape")
        shape = []
        for _ in range(ndim):
            d, pos = read_varint(buf, pos)
            shape.append(d)
        numel = math.prod(shape)
        if numel == 0 or numel > max_values:
            raise CorruptFileError("corrupt row-step code: bad shape")
        nrows = shape[0] if ndim >= 2 else 1
        size = packed_size(nrows, 2)
        levels = unpack_fixed(buf[pos:pos + size], nrows, 2).astype(np.int64)
        pos += size
        out: np.ndarray | None = None
        for k in range(ROW_LEVELS):
            length, pos = read_varint(buf, pos)
            if not length:
                continue
            part = decode_quantized(buf[pos:pos + length], max_values)
            pos += length
            want = int((levels == k).sum())
            if part.ndim < 1 or part.shape[0] != want or part.size != want * (numel // nrows):
                raise CorruptFileError("corrupt row-step code: a level's rows do not match the levels")
            if out is None:
                out = np.empty((nrows, numel // nrows), dtype=part.dtype)
            out[levels == k] = part.reshape(want, -1)
    except (IndexError, ValueError):
        raise CorruptFileError("corrupt row-step code: truncated") from None
    if out is None or pos != len(buf):
        raise CorruptFileError("corrupt row-step code: rows missing or bytes left over")
    return out.reshape(shape)


def reconstruct_rows(x: Any, step: float, levels: np.ndarray) -> np.ndarray:
    """What :func:`decode_rows` returns for ``x``, without building the code."""
    a = as_named(x)
    values, rows = _rows(a)
    out = np.empty(rows.shape, dtype=np.float64 if a.dtype == "float64" else np.float32)
    for k in np.unique(levels):
        out[levels == k] = reconstruct(_subset(a, rows[levels == k]), delta=step * 2 ** int(k))
    return out.reshape(values.shape)


def _rows(a: NamedArray) -> tuple[np.ndarray, np.ndarray]:
    """A tensor's values and their view as rows (the first axis; a vector is one row)."""
    values = a.values()
    return values, values.reshape(values.shape[0], -1) if values.ndim >= 2 else values.reshape(1, -1)


def _subset(a: NamedArray, part: np.ndarray) -> NamedArray:
    """Some of a tensor's rows (from :func:`_rows`) as a tensor of its dtype."""
    data = storage(part.astype(np.float32), "bfloat16") if a.dtype == "bfloat16" else part.astype(a.data.dtype)
    return NamedArray(a.name, np.ascontiguousarray(data), a.dtype)


# ---------------------------------------------------------------- entropy codes
def _entropy_code(sym: np.ndarray) -> tuple[str, bytes]:
    """The shortest of our codes for these symbols: (method, bytes after the step)."""
    lo, hi = (int(sym.min()), int(sym.max())) if sym.size else (0, 0)
    prefix = varint(zigzag(lo)) + varint(hi - lo)
    if hi == lo:
        return "const", prefix
    offsets = sym - lo  # once, for the candidates coding offsets; freed before the parametric ones run
    candidates = {"zstd": _zstd_code(offsets, hi - lo)}
    if hi - lo < MAX_ANS_ALPHABET and -(2 ** 31) <= lo and hi < 2 ** 31:
        counts = bincount(offsets, minlength=hi - lo + 1)
        candidates["order0"] = _order0_code(offsets, counts)
        del offsets
        # parametric models are only tried when their predicted length can win
        best = min(len(c) for c in candidates.values())
        for name in ("gaussian", "laplace"):
            params = _fit(name, sym, counts, lo)
            if _predicted_bytes(name, params, counts, lo) < best:
                candidates[name] = _parametric_code(name, sym, lo, hi, params)
    method = min(candidates, key=lambda k: len(candidates[k]))
    return method, prefix + candidates[method]


def symbol_range(dtype: str, step: float) -> tuple[int, int]:
    """The symbols an encoder can write for a ``dtype`` tensor on ``step``: an integer or bool tensor's own
    range at step 1 (its only step), a float tensor's finite range over the step. CorruptFileError otherwise:
    a code whose symbols or step do not fit its dtype is a code of another tensor, refused, not cast."""
    if dtype == "bool" or dtype.startswith(("int", "uint")):
        if step != 1.0:
            raise CorruptFileError(f"corrupt quant code: a {dtype} tensor is coded at step 1, not {step:g}")
        if dtype == "bool":
            return 0, 1
        info = np.iinfo(dtype)
        return max(int(info.min), -(2 ** 63)), min(int(info.max), 2 ** 63 - 1)
    top = float(np.finfo(np.float32).max) if dtype == "bfloat16" else float(np.finfo(dtype).max)
    ratio = top / step
    bound = 2 ** 62 if ratio >= 2.0 ** 62 else math.floor(ratio) + 1
    return -bound, bound


def _entropy_decode(method: str, buf: memoryview, pos: int, n: int, allowed: tuple[int, int]) -> np.ndarray:
    z, pos = read_varint(buf, pos)
    span, pos = read_varint(buf, pos)
    lo = unzigzag(z)
    if not -(2 ** 63) <= lo <= lo + span < 2 ** 63:  # symbols are int64: anything else is a damaged code
        raise CorruptFileError("corrupt quant code: symbols out of the 64-bit range")
    if not allowed[0] <= lo <= lo + span <= allowed[1]:
        raise CorruptFileError("corrupt quant code: symbols outside what its dtype and step can hold")
    # int32 symbols where every one fits (with room for differences), so decoding holds 4 bytes a value
    kind = np.int32 if -(2 ** 30) < lo and lo + span < 2 ** 30 else np.int64
    if method == "const":  # a read-only view of one value: the output is the only allocation of a constant
        return np.broadcast_to(kind(lo), (n,))
    if method == "zstd":
        out = _zstd_decode(buf[pos:], span, n, kind)
    elif method == "order0":
        if span >= MAX_ANS_ALPHABET:
            raise CorruptFileError("corrupt quant code: symbol table too large")
        out = _order0_decode(buf, pos, n, span)
    else:
        params = struct.unpack_from("<dd", buf, pos)
        if span < 1 or span >= MAX_ANS_ALPHABET or not (math.isfinite(params[0]) and math.isfinite(params[1])) \
                or params[1] <= 0 or not -(2 ** 31) <= lo < 2 ** 31 - span:
            raise CorruptFileError("corrupt quant code: bad model parameters")
        return _ans_decode(_model(method, lo, lo + span, params), buf[pos + 16:], n).astype(kind, copy=False)
    out = out.astype(kind, copy=False)
    out += kind(lo)
    return out


def _width(span: int) -> int:
    return next(w for w in (1, 2, 4, 8) if span < 256 ** w)


def _zstd_code(offsets: np.ndarray, span: int) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(offsets.astype(f"<u{_width(span)}", copy=False))


def _zstd_decode(payload: memoryview, span: int, n: int, kind: Any = np.int64) -> np.ndarray:
    from . import zstd_decompress

    width = _width(span)
    raw = zstd_decompress(payload, n * width, "quant code")
    if len(raw) != n * width:
        raise CorruptFileError("corrupt quant code: wrong number of symbols")
    return np.frombuffer(raw, dtype=f"<u{width}").astype(kind)


def _order0_code(offsets: np.ndarray, counts: np.ndarray) -> bytes:
    table = pack_tables([counts])
    return varint(len(table)) + table + ans.encode([(ans.categorical(counts), offsets, None)])


def _order0_decode(buf: memoryview, pos: int, n: int, span: int) -> np.ndarray:
    size, pos = read_varint(buf, pos)
    (counts,) = unpack_tables(buf[pos:pos + size], 1, span + 1, "quant code")
    if counts.size != span + 1 or counts.sum() != n:
        raise CorruptFileError("corrupt quant code: symbol table does not match the shape")
    return _ans_decode(ans.categorical(counts), buf[pos + size:], n)


def _fit(name: str, sym: np.ndarray, counts: np.ndarray, lo: int) -> tuple[float, float]:
    """Maximum-likelihood (mean, scale) of the continuous model, from the symbol histogram."""
    support = np.arange(lo, lo + counts.size, dtype=np.float64)
    w = counts / counts.sum()
    if name == "gaussian":
        mean = float(np.dot(w, support))
        return mean, max(float(np.sqrt(np.dot(w, (support - mean) ** 2))), 0.1)
    cdf = np.cumsum(w)
    median = float(support[np.searchsorted(cdf, 0.5)])
    return median, max(float(np.dot(w, np.abs(support - median))), 0.1)


def _predicted_bytes(name: str, params: tuple[float, float], counts: np.ndarray, lo: int) -> float:
    """Cross-entropy of the symbols under the discretised model, in bytes (what ANS will spend, within a word)."""
    from scipy.special import ndtr

    mean, scale = params
    z = (np.arange(lo, lo + counts.size + 1, dtype=np.float64) - 0.5 - mean) / scale
    cdf = ndtr(z) if name == "gaussian" else np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)),
                                                       1 - 0.5 * np.exp(-np.maximum(z, 0)))
    mass = np.diff(cdf)
    mass = np.maximum(mass / mass.sum(), 2.0 ** -24)
    used = counts > 0
    return float(-np.dot(counts[used], np.log2(mass[used]))) / 8 + 16


def _model(name: str, lo: int, hi: int, params: tuple[float, float]) -> object:
    return ans.quantized(name, lo, hi, params[0], params[1])


def _parametric_code(name: str, sym: np.ndarray, lo: int, hi: int, params: tuple[float, float]) -> bytes:
    return struct.pack("<dd", *params) + ans.encode([(_model(name, lo, hi, params), sym, None)])


def _ans_decode(model: object, payload: memoryview, n: int) -> np.ndarray:
    decoder = ans.Decoder(payload, "quant code")
    out = decoder.decode(model, n, dtype=np.int32)  # ANS symbols are int32
    decoder.finish()
    return out


__all__ = ["encode_quantized", "decode_quantized", "code_quantized", "reconstruct", "float_step", "restored", "code_rows", "decode_rows", "reconstruct_rows", "QuantizedCode", "check_precision", "quantize"]
