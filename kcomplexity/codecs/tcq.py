"""Trellis-coded (dependent) quantisation with context-modelled ANS: the shortest lossy code of weights we have.

Two scalar quantisers share one step ``d``: ``Q0`` reconstructs index ``q``
at ``2q·d`` (even multiples), ``Q1`` at ``(2q - sign(q))·d`` (odd multiples
and zero). Which one codes a value is decided by a four-state machine
driven by the parity of the previous index (the dependent quantisation of
H.266/VVC and NNCodec's DeepCABAC). The union of both grids is every
multiple of ``d``, but each value only pays for the indices of one of
them, so the encoder gets a denser grid for the rate of a sparser one: it
picks the whole sequence of indices by a Viterbi search minimising
``(x - x̂)² / d² + lam · bits``. At high rate this buys most of the
trellis's granular gain (about 0.15 bits per value over a uniform scalar
quantiser at the same MSE on all-MiniLM-L6-v2).

The indices are then coded by ANS with one count table per context. A
context is the quantiser in use (two) and the row's scale class (four
classes by the quartiles of the rows' RMS, sent as two bits per row), since
rows of a weight matrix differ in scale and a table per scale class fits
each better than one table for all.

The flat tensor is cut into chunks of ``L`` values that each start in
state 0, so the encoder's search and the decoder's state tracking run
across all chunks at once (vectorised over chunks, a loop over the ``L``
positions) instead of one value at a time.

Layout (integers as LEB128 varints; ``zz`` = zig-zag signed), after the
container header (:mod:`kcomplexity.codecs.container`)::

    step(float64 LE) L K [row classes: pack_fixed, 2 bits each, if K > 1]
    zz(lo) (hi - lo) [len(tables) tables: pack_tables of 2K count arrays, if hi > lo]
    ANS payload: position-major, then by context

Every value comes back within ``2·d`` (reported as ``max_abs_err``).
Integer and bool tensors are not quantised: they get the exact quant code
(:mod:`kcomplexity.codecs.quant`, step 1), which :func:`decode_tcq` also
reads.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ..errors import CorruptFileError, EstimatorSettingError
from ..sources import as_named
from . import ans
from .bits import pack_fixed, pack_tables, packed_size, read_varint, unpack_fixed, unpack_tables, unzigzag, varint, zigzag
from .container import MAX_VALUES, Header, codec_of, read_header
from .quant import QuantizedCode, check_precision, code_quantized, decode_quantized, float_step, restored

VERSION = 1
#: values per chunk; each chunk's trellis starts in state 0
CHUNK = 256
#: row scale classes (quartiles of the rows' RMS) when a tensor has at least MIN_ROWS rows
CLASSES, MIN_ROWS = 4, 16
#: the default weight of a bit against a squared step in the trellis search
DEFAULT_LAM = 0.3
#: chunks searched at once: bounds the search's back-pointer memory to about 20 bytes x BLOCK x CHUNK (20 MiB)
BLOCK = 1 << 12

#: next state by (state, parity of the index); states 0-1 use Q0, 2-3 use Q1
NEXT = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int64)
#: the two (previous state, parity) pairs entering each state
_IN_S = np.array([[0, 1], [2, 3], [0, 1], [2, 3]])
_IN_P = np.array([[0, 1], [0, 1], [1, 0], [1, 0]])


def levels(q: np.ndarray, quantiser: np.ndarray) -> np.ndarray:
    """Reconstruction in units of the step: ``2q`` under Q0, ``2q - sign(q)`` under Q1 (float64)."""
    q = q.astype(np.float64)
    return np.where(quantiser == 0, 2 * q, 2 * q - np.sign(q))


def code_tcq(x: Any, rel: float | None = None, delta: float | None = None, lam: float = DEFAULT_LAM
             ) -> QuantizedCode:
    """The trellis code of one tensor (step ``d`` = ``delta`` or ``rel`` x its RMS), with its distortion.

    ``bits`` is ``8 * len(data)``; :func:`decode_tcq` rebuilds every value within ``2 d``."""
    rel, delta = check_precision(rel, delta)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < math.inf:
        raise EstimatorSettingError(f"lam must be a finite number >= 0, got {lam!r}")
    a = as_named(x)
    if not (a.data.dtype.kind == "f" or a.dtype == "bfloat16"):
        return code_quantized(a, delta=1.0)  # integers and bools are coded exactly
    vals = a.values().reshape(-1)  # float32 (float64 for float64): widened a block at a time below
    step = float_step(a.name, vals, rel, delta)
    n = vals.size
    v_lo, v_hi = float(vals.min()), float(vals.max())
    if max(abs(v_lo), abs(v_hi)) / step >= 2.0 ** 40 \
            or np.rint(v_hi / step / 2) - np.rint(v_lo / step / 2) + 8 >= ans.MAX_ALPHABET:
        # levels the decoder's range or the context tables cannot hold (an outlier far from the rest, a step
        # far too fine): before the search sizes its rate tables by them, fall back to the quant code on the
        # same step, which codes any alphabet, keeps every value within step / 2 and is read by decode_tcq
        return code_quantized(a, delta=step)
    length = max(1, min(CHUNK, n))
    rows = _row_classes(vals, a.shape)
    k = int(rows.max()) + 1
    grid = _Grid(vals, step, rows, _cols(n, a.shape), length)
    # int32 indices where every one fits (|index| is about |value| / 2 step)
    grid.kind = np.int32 if max(abs(v_lo), abs(v_hi)) / step < 2.0 ** 30 else np.int64
    q, quantiser = _search(grid, k, float(lam), v_lo / step, v_hi / step)
    lo, hi = int(q.min()), int(q.max())
    if hi - lo >= ans.MAX_ALPHABET:
        raise EstimatorSettingError(f"step {step:g} is too fine for tensor '{a.name}' (more than "
                                    f"{ans.MAX_ALPHABET:,} levels); use quant")
    body = bytearray(struct.pack("<d", step) + varint(length) + varint(k))
    if k > 1:
        body += pack_fixed(rows.astype(np.uint8), 2)
    body += varint(zigzag(lo)) + varint(hi - lo)
    sse, max_abs_err, signal = _distortion(grid, q, quantiser, a.dtype)
    if hi > lo:
        counts = list(grid.counts(q, quantiser, k, lo, hi - lo))
        table = pack_tables(counts)
        body += varint(len(table)) + table
        body += ans.encode(_parts(grid, q, quantiser, k, lo, counts))
    head = Header("tcq", VERSION, a.dtype, tuple(int(d) for d in a.shape)).to_bytes()
    return QuantizedCode(data=head + bytes(body), step=float(step), method="tcq", numel=n, sse=sse,
                         max_abs_err=max_abs_err, signal=signal)


#: values handled at a time outside the search (row classes, counts, distortion)
_BLOCK_VALUES = 1 << 20


def _distortion(grid: "_Grid", q: np.ndarray, quantiser: np.ndarray, dtype: str) -> tuple[float, float, float]:
    """(sum of squared errors, largest error, sum of squared values) in float64, a block at a time (one block:
    exactly the sums over the whole tensor)."""
    sse = max_abs_err = signal = 0.0
    for lo in range(0, grid.n, _BLOCK_VALUES):
        hi = min(grid.n, lo + _BLOCK_VALUES)
        orig = grid.vals[lo:hi].astype(np.float64)
        err = restored(levels(q[lo:hi], quantiser[lo:hi]) * grid.step, dtype) - orig
        sse += float(np.dot(err, err))
        max_abs_err = max(max_abs_err, float(np.abs(err).max()))
        signal += float(np.dot(orig, orig))
    return sse, max_abs_err, signal


def encode_tcq(x: Any, rel: float | None = None, delta: float | None = None, lam: float = DEFAULT_LAM) -> bytes:
    """The bytes of :func:`code_tcq`."""
    return code_tcq(x, rel=rel, delta=delta, lam=lam).data


def decode_tcq(data: bytes, max_values: int = MAX_VALUES) -> np.ndarray:
    """Inverse of :func:`encode_tcq`: float32 values (float64 for float64 tensors) in the original shape;
    integer and bool tensors exactly. Damaged codes raise CorruptFileError."""
    if codec_of(data) == "quant":
        return decode_quantized(data, max_values)
    head, pos = read_header(data, "tcq", (VERSION,), max_values)
    if head.dtype not in ("float32", "float16", "bfloat16", "float64"):
        # the encoder gives integer and bool tensors the exact quant code: a tcq code of one is another tensor's
        raise CorruptFileError(f"corrupt tcq code: tcq codes float tensors, not {head.dtype}")
    buf = memoryview(bytes(data))
    n = head.numel
    if n == 0:
        return np.zeros(head.shape, dtype=np.float64 if head.dtype == "float64" else np.float32)
    try:
        (step,) = struct.unpack_from("<d", buf, pos)
        if not math.isfinite(step) or step <= 0:
            raise CorruptFileError("corrupt tcq code: bad step")
        length, pos = read_varint(buf, pos + 8)
        k, pos = read_varint(buf, pos)
        if not 1 <= length <= max(1, min(CHUNK, n)) or not 1 <= k <= CLASSES:
            raise CorruptFileError("corrupt tcq code: bad layout")
        nrows = _nrows(head.shape)
        if k > 1:
            nbytes = packed_size(nrows, 2)
            if pos + nbytes > len(buf):
                raise IndexError
            rows = unpack_fixed(buf[pos:pos + nbytes], nrows, 2).astype(np.int64)
            pos += nbytes
            if rows.max() >= k:
                raise CorruptFileError("corrupt tcq code: bad row class")
        else:
            rows = np.zeros(nrows, dtype=np.int64)
        z, pos = read_varint(buf, pos)
        span, pos = read_varint(buf, pos)
        lo = unzigzag(z)
        if span >= ans.MAX_ALPHABET or not -(2 ** 40) <= lo <= lo + span < 2 ** 40:
            raise CorruptFileError("corrupt tcq code: symbols out of range")
        top = float(np.finfo(np.float32 if head.dtype == "bfloat16" else head.dtype).max)
        if (2 * max(abs(lo), abs(lo + span)) - 1) * step > top:
            raise CorruptFileError(f"corrupt tcq code: levels beyond what {head.dtype} holds")
        cols = _cols(n, head.shape)
        if span == 0:
            offsets = np.zeros((-(-n // length), length), dtype=np.int32)
            quantiser = _track(offsets, lo)
        else:
            size, pos = read_varint(buf, pos)
            counts = unpack_tables(buf[pos:pos + size], 2 * k, span + 1, "tcq code")
            if len(counts) != 2 * k or any(c.size != span + 1 for c in counts) or sum(int(c.sum()) for c in counts) != n:
                raise CorruptFileError("corrupt tcq code: count tables do not match the shape")
            offsets, quantiser = _decode_symbols(buf[pos + size:], counts, rows, cols, lo, n, length, k)
    except (IndexError, struct.error):
        raise CorruptFileError("corrupt tcq code: truncated") from None
    return _values(offsets, quantiser, lo, step, n, head).reshape(head.shape)


#: values turned into levels at a time, so no float64 copy of a whole tensor is held
_OUT_BLOCK = 1 << 20


def _values(offsets: np.ndarray, quantiser: np.ndarray, lo: int, step: float, n: int, head: Header) -> np.ndarray:
    """The decoded values (float32; float64 for float64 tensors) of indices ``lo + offsets``, block by block."""
    out = np.empty(n, dtype=np.float64 if head.dtype == "float64" else np.float32)
    flat_q, flat_z = offsets.reshape(-1), quantiser.reshape(-1)
    for b in range(0, n, _OUT_BLOCK):
        e = min(n, b + _OUT_BLOCK)
        out[b:e] = levels(flat_q[b:e].astype(np.int64) + lo, flat_z[b:e]) * step
    return out


def _track(offsets: np.ndarray, lo: int) -> np.ndarray:
    """Which quantiser codes each index (``lo + offsets``, chunks x positions): each chunk's state machine from
    state 0, as int8."""
    state = np.zeros(offsets.shape[0], dtype=np.int64)
    out = np.empty(offsets.shape, dtype=np.int8)
    for t in range(offsets.shape[1]):
        out[:, t] = state >> 1
        state = NEXT[state, (offsets[:, t] + (lo & 1)) & 1]
    return out


# ---------------------------------------------------------------- the search
def _nrows(shape: tuple[int, ...]) -> int:
    return int(shape[0]) if len(shape) >= 2 and shape[0] > 0 else 1


def _row_classes(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each row's scale class: the quartile of its RMS among the rows (all 0 for vectors and short matrices).
    Rows are widened to float64 a block at a time (each row's mean is its own, so the classes do not move)."""
    nrows = _nrows(shape)
    if nrows < MIN_ROWS or v.size == 0:
        return np.zeros(nrows, dtype=np.int64)
    matrix = v.reshape(nrows, -1)
    per = max(1, _BLOCK_VALUES // matrix.shape[1])
    rms = np.concatenate([np.sqrt(np.mean(matrix[r:r + per].astype(np.float64) ** 2, axis=1))
                          for r in range(0, nrows, per)])
    edges = np.quantile(rms, [0.25, 0.5, 0.75])
    return np.searchsorted(edges, rms, side="right").astype(np.int64)


def _cols(n: int, shape: tuple[int, ...]) -> int:
    """Values per row of the flat tensor (the row of flat position p is p // cols)."""
    return max(1, n // _nrows(shape))


class _Grid:
    """A tensor's values as (chunks, length) blocks of at most BLOCK chunks, built one block at a time: the
    values over the step in float64, each value's row class, which positions hold values (the last chunk is
    padded). Nothing of the tensor's size is copied beyond the blocks."""

    def __init__(self, vals: np.ndarray, step: float, rows: np.ndarray, cols: int, length: int) -> None:
        self.vals, self.step, self.rows, self.cols, self.length = vals, step, rows, cols, length
        self.n = vals.size
        self.m = -(-self.n // length)
        self.kind: Any = np.int64  # the indices' integer type

    def blocks(self) -> Any:
        """(first value, end value, Y, RC, valid) per block of chunks."""
        for b in range(0, self.m, BLOCK):
            e = min(self.m, b + BLOCK)
            lo, hi = b * self.length, min(self.n, e * self.length)
            size = (e - b) * self.length
            y = np.zeros(size)
            y[:hi - lo] = self.vals[lo:hi].astype(np.float64) / self.step
            rc = np.zeros(size, dtype=np.int64)
            rc[:hi - lo] = self.row_class(lo, hi)
            valid = np.arange(size) < hi - lo
            shape = (e - b, self.length)
            yield lo, hi, y.reshape(shape), rc.reshape(shape), valid.reshape(shape)

    def row_class(self, lo: int, hi: int) -> np.ndarray:
        return self.rows[np.arange(lo, hi, dtype=np.int64) // self.cols]

    def counts(self, q: np.ndarray, quantiser: np.ndarray, k: int, lo: int, span: int) -> np.ndarray:
        """Per context (quantiser x k + row class): the count of each index lo..lo+span, (2k, span + 1)."""
        out = np.zeros(2 * k * (span + 1), dtype=np.int64)
        for a in range(0, self.n, _BLOCK_VALUES):
            b = min(self.n, a + _BLOCK_VALUES)
            ctx = quantiser[a:b].astype(np.int64) * k + self.row_class(a, b)
            out += np.bincount(ctx * (span + 1) + (q[a:b] - lo), minlength=out.size)
        return out.reshape(2 * k, span + 1)


def _rates(counts: np.ndarray) -> np.ndarray:
    """-log2 p(q | context) from the counts (+ 1/2), as (contexts, span + 1)."""
    counts = counts + 0.5
    return -np.log2(counts / counts.sum(axis=1, keepdims=True))


def _search(grid: _Grid, k: int, lam: float, y_lo: float, y_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (int32) and quantiser (int8) of each value by a Viterbi search of D + lam·R; two passes, the
    second pricing bits by the first's per-context statistics. ``y_lo``, ``y_hi``: the extreme values / step."""
    # first pricing: the nearest Q0 indices' histogram, the same for every context
    lo, hi = int(np.rint(y_lo / 2)) - 2, int(np.rint(y_hi / 2)) + 2
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    for _, end, y, _, valid in grid.blocks():
        counts += np.bincount(np.rint(y[valid] / 2).astype(np.int64) - lo, minlength=counts.size)
    rate = np.repeat(_rates(counts[None, :]), 2 * k, axis=0)
    q = quantiser = None
    for _ in range(2):
        q = quantiser = None  # the last pass is priced into rate: free it before the next one is searched
        q, quantiser = _viterbi(grid, lam, rate, lo, k)
        lo, hi = int(q.min()) - 2, int(q.max()) + 2
        rate = _rates(grid.counts(q, quantiser, k, lo, hi - lo))
    return q, quantiser


def _viterbi(grid: _Grid, lam: float, rate: np.ndarray, lo: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    span = rate.shape[1]
    flat_rate = rate.reshape(-1)
    q = np.empty(grid.n, dtype=grid.kind)
    quantiser = np.empty(grid.n, dtype=np.int8)
    for a, b, y, rc, valid in grid.blocks():
        block = _viterbi_block(y, rc, valid, lam, flat_rate, lo, span, k)
        q[a:b] = block.reshape(-1)[:b - a]
        quantiser[a:b] = _track(block, 0).reshape(-1)[:b - a]
    return q, quantiser


def _viterbi_block(Y: np.ndarray, RC: np.ndarray, valid: np.ndarray, lam: float, flat_rate: np.ndarray, lo: int,
                   span: int, k: int) -> np.ndarray:
    m, length = Y.shape
    J = np.full((m, 4), np.inf)
    J[:, 0] = 0.0
    back_q = np.empty((length, m, 4), dtype=np.int64 if np.abs(Y).max(initial=0) >= 2.0 ** 30 else np.int32)
    back_s = np.empty((length, m, 4), dtype=np.int8)
    rows_m = np.arange(m)[:, None]
    for t in range(length):
        y = Y[:, t]
        f = np.floor(y / 2)
        odd = 2 * np.floor((y - 1) / 2) + 1  # the odd integer at or below y
        # candidates: Q0 -> indices f, f+1 (levels 2f, 2f+2); Q1 -> the odd levels around y, and 0
        cand = np.stack([f, f + 1, (odd + np.sign(odd)) / 2, (odd + 2 + np.sign(odd + 2)) / 2, np.zeros(m)],
                        axis=1)
        quant = np.array([0, 0, 1, 1, 1])
        lev = np.where(quant == 0, 2 * cand, 2 * cand - np.sign(cand))
        ci = cand.astype(np.int64)
        idx = (quant * k + RC[:, t, None]) * span + np.clip(ci - lo, 0, span - 1)
        cost = (y[:, None] - lev) ** 2 + lam * flat_rate[idx]
        parity = ci & 1
        best_c = np.empty((m, 2, 2))
        best_q = np.empty((m, 2, 2), dtype=np.int64)
        for qz, cols in ((0, slice(0, 2)), (1, slice(2, 5))):
            for p in (0, 1):
                c = np.where(parity[:, cols] == p, cost[:, cols], np.inf)
                j = np.argmin(c, axis=1)
                best_c[:, qz, p] = c[np.arange(m), j]
                best_q[:, qz, p] = ci[:, cols][np.arange(m), j]
        pad = ~valid[:, t]
        if pad.any():  # past the tensor's end: free, so the path's end is chosen by real values only
            best_c[pad] = 0.0
            best_q[pad] = 0
        into = J[:, _IN_S] + best_c[:, _IN_S >> 1, _IN_P]  # (m, 4 states, 2 incoming)
        pick = np.argmin(into, axis=2)
        J = np.take_along_axis(into, pick[..., None], axis=2)[..., 0]
        back_q[t] = best_q[:, _IN_S >> 1, _IN_P][rows_m, np.arange(4), pick]
        back_s[t] = _IN_S[np.arange(4), pick]
    out = np.empty((m, length), dtype=np.int64)
    s = np.argmin(J, axis=1)
    ar = np.arange(m)
    for t in range(length - 1, -1, -1):
        out[:, t] = back_q[t, ar, s]
        s = back_s[t, ar, s]
    return out


# ---------------------------------------------------------------- entropy coding
def _models(counts: list[np.ndarray]) -> list[Any]:
    """Each context's ANS model (None for a context no symbol uses)."""
    return [ans.categorical(c) if c.sum() else None for c in counts]


def _parts(grid: _Grid, q: np.ndarray, quantiser: np.ndarray, k: int, lo: int, counts: list[np.ndarray]) -> list:
    """ANS parts in decoding order: position by position across chunks, and within a position by context.
    Offsets are int32 and contexts int8 (-1 past the end), laid out as (chunks, length) once."""
    models = _models(counts)
    size = grid.m * grid.length
    offsets = np.zeros(size, dtype=np.int32)  # offsets from lo: below the alphabet's 2^20
    offsets[:grid.n] = q - lo if grid.kind is np.int64 else q
    if grid.kind is not np.int64:
        offsets[:grid.n] -= np.int32(lo)
    ctx = np.full(size, -1, dtype=np.int8)
    for a in range(0, grid.n, _BLOCK_VALUES):
        b = min(grid.n, a + _BLOCK_VALUES)
        ctx[a:b] = quantiser[a:b] * k + grid.row_class(a, b)
    Q, C = offsets.reshape(grid.m, grid.length), ctx.reshape(grid.m, grid.length)
    parts = []
    for t in range(grid.length):
        for c, model in enumerate(models):
            if model is not None:
                sel = Q[C[:, t] == c, t]
                if sel.size:
                    parts.append((model, sel, None))
    return parts


def _decode_symbols(payload: memoryview, counts: list[np.ndarray], rows: np.ndarray, cols: int, lo: int, n: int,
                    length: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Index offsets from ``lo`` (int32, chunks x positions) and quantisers (int8), tracking every chunk's state
    as its symbols come in; ``rows`` holds each row's class and ``cols`` the values a row. Compact types and
    no per-value context arrays keep the working memory a small multiple of the output."""
    models = _models(counts)
    decoder = ans.Decoder(payload, "tcq code")
    m = -(-n // length)
    offsets = np.zeros((m, length), dtype=np.int32)
    quantiser = np.zeros((m, length), dtype=np.int8)
    state = np.zeros(m, dtype=np.int64)
    start = np.arange(m, dtype=np.int64) * length
    for t in range(length):
        pos = start + t
        ctx = np.where(pos < n, (state >> 1) * k + rows[np.minimum(pos, n - 1) // cols], -1)
        quantiser[:, t] = state >> 1
        for c, model in enumerate(models):
            sel = np.flatnonzero(ctx == c)
            if sel.size:
                if model is None:
                    raise CorruptFileError("corrupt tcq code: a symbol in a context with no symbols")
                offsets[sel, t] = decoder.decode(model, sel.size, dtype=np.int32)
        state = NEXT[state, (offsets[:, t] + (lo & 1)) & 1]
    decoder.finish()
    return offsets, quantiser


__all__ = ["code_tcq", "encode_tcq", "decode_tcq", "levels", "DEFAULT_LAM"]
