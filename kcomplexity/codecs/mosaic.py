"""A real, decodable lossless code for a mosaic: motif table + one index per block.

Layout of an encoded mosaic (all integers little-endian LEB128 varints):

    header   m, s, dtype code, [q if levels], k_used, mode   (bytes)
    [mode 1] L_max, then for L = 1..L_max the number of motifs whose
             Huffman codeword has length L             (bytes)
    body     motif table: k_used x s values at q bits each, MSB first,
             then the mosaic: m codewords               (bits, padded once to a byte)

``mode 0`` writes each block's motif index in ceil(log2 k_used) bits (the
paper's bound); ``mode 1`` writes canonical Huffman codewords built from
motif usage. The motif table is written in canonical order (by codeword
length), so the code lengths themselves cost only the small histogram.
``mode 2`` (raw) writes every block's values in order and no index
(k_used = m): a tensor without repeated blocks costs its n*q bits. The
encoder keeps whichever mode is shortest, so the result is never longer
than the paper's bound, nor than the raw values, plus the header. Motifs
no block uses are dropped.

q follows from the dtype: the width of a float dtype, or the q of ``levels{q}``
(q-bit two's-complement integers, e.g. the levels of quantisation-aware
training; q follows the dtype code in the header). The layout (tensor names, shapes, hence n and the
per-tensor padding) is side information the decoder is given, as in the
paper: it does not grow with the weights.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bits import BIT_BLOCK, BitWriter, bincount, bits_at, read_fixed, read_varint, varint as _varint
from .container import MAX_VALUES
from ..errors import CorruptMosaicError, MDLError
from ..sources import NamedArray

#: value dtypes a motif table can be stored in exactly, by code
DTYPES = {0: "float32", 1: "float16", 2: "bfloat16", 3: "float64"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
WIDTH = {"float32": 32, "float16": 16, "bfloat16": 16, "float64": 64}
#: code of q-bit integer levels ("levels8" etc.: two's complement, q in the header after the code)
LEVELS_CODE = 4
#: Huffman is tried up to this many used motifs; above it usage is close to
#: uniform (e.g. a tensor without repeated blocks) and the fixed code is used
HUFFMAN_MAX_SYMBOLS = 1 << 17
MAX_CODEWORD = 57


@dataclass(frozen=True)
class MosaicPlan:
    """Everything needed to size or write the code: used motifs in code order, and per-block symbols."""

    n: int
    s: int
    q: int
    dtype: str
    patterns: np.ndarray   # (k_used, s) unsigned bit patterns, in code order
    symbols: np.ndarray    # (m,) index into patterns
    counts: np.ndarray     # (k_used,) usage
    lengths: np.ndarray | None  # (k_used,) Huffman codeword lengths, None in fixed mode
    raw: bool = False      # mode 2: every block's values in order, no motif index (wins without repetition)
    usage: np.ndarray | None = None  # usage of the distinct motifs, whatever the mode (raw: from the mosaic)

    @property
    def mode(self) -> int:
        return 2 if self.raw else int(self.lengths is not None)
    @property
    def m(self) -> int:
        return int(self.symbols.size)

    @property
    def k_used(self) -> int:
        return int(self.counts.size)

    def header(self) -> bytes:
        code = [LEVELS_CODE, self.q] if self.dtype.startswith("levels") else [DTYPE_CODES[self.dtype]]
        fields = [self.m, self.s, *code, self.k_used, self.mode]
        if self.lengths is not None:
            hist = np.bincount(self.lengths, minlength=int(self.lengths.max()) + 1)[1:]
            fields += [hist.size, *hist.tolist()]
        return b"".join(_varint(int(f)) for f in fields)

    def body_bits(self) -> int:
        table = self.k_used * self.s * self.q
        if self.raw:
            return table
        if self.lengths is None:
            return table + self.m * index_width(self.k_used)
        return table + int(np.dot(self.counts, self.lengths))

    @property
    def total_bits(self) -> int:
        """Length of :func:`encode`'s output, in bits (whole bytes)."""
        return 8 * (len(self.header()) + (self.body_bits() + 7) // 8)


def width(dtype: str) -> int:
    """Bits per stored value of ``dtype`` (a float dtype's width, or q of ``levels{q}``)."""
    if dtype in WIDTH:
        return WIDTH[dtype]
    q = dtype.removeprefix("levels")
    if dtype.startswith("levels") and q.isdigit() and 1 <= int(q) <= 64:
        return int(q)
    raise MDLError(f"cannot code motif values of dtype {dtype}; supported: {', '.join(DTYPE_CODES)}, levels1..levels64")


def index_width(k: int) -> int:
    """Bits of a fixed-length index among k motifs: ceil(log2 k), 0 for k = 1."""
    return int(math.ceil(math.log2(k))) if k > 1 else 0


def plan(patterns: np.ndarray, index: np.ndarray, n: int, s: int, dtype: str, distinct: bool = False,
         rows: np.ndarray | None = None) -> MosaicPlan:
    """Choose the shortest of the fixed, Huffman and raw codes for motif table ``patterns`` and block ``index``.

    The raw code (every block's values, no index) makes the length of any
    tensor at most its n*q bits (plus padding of the last block and a header).

    ``patterns`` are the motifs' unsigned bit patterns (k x s, width of
    ``dtype``); duplicate and unused motifs are merged/dropped here.
    ``distinct=True`` says the rows are already distinct and all used (skips the merge).
    ``rows``, when given, are the blocks themselves in order (``patterns[index]``): the raw code uses them
    without gathering a copy.
    """
    q = width(dtype)
    if distinct:
        uniq, symbols = patterns.reshape(patterns.shape[0], -1), np.asarray(index)
    else:
        uniq, inverse = unique_rows(patterns.reshape(patterns.shape[0], -1))
        symbols = inverse.reshape(-1)[np.asarray(index, dtype=np.int64)]
    counts = bincount(symbols, minlength=uniq.shape[0])
    if not counts.all():  # drop motifs no block uses
        used = np.flatnonzero(counts)
        remap = np.full(uniq.shape[0], -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        uniq, symbols, counts = uniq[used], remap[symbols], counts[used]
    k_used = counts.size
    candidates = [MosaicPlan(n, s, q, dtype, uniq, symbols, counts, None, usage=counts)]
    m = symbols.size
    if m * s * q < candidates[0].body_bits():
        blocks = rows.reshape(m, -1) if rows is not None else uniq[symbols]
        candidates.append(MosaicPlan(n, s, q, dtype, blocks, np.arange(m, dtype=np.int32),
                                     np.broadcast_to(np.int64(1), (m,)), None, raw=True, usage=counts))
    if 2 <= k_used <= HUFFMAN_MAX_SYMBOLS:
        lengths = huffman_lengths(counts)
        if lengths.max() <= MAX_CODEWORD:
            order = np.lexsort((np.arange(k_used), lengths))   # canonical order: by length, then old position
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            candidates.append(MosaicPlan(n, s, q, dtype, uniq[order], rank[symbols], counts[order], lengths[order],
                                         usage=counts))
    return min(candidates, key=lambda c: c.total_bits)  # ties keep the earlier (simpler) code


_PATTERN = {16: np.uint16, 32: np.uint32, 64: np.uint64}


def padded_patterns(arrays: Sequence[NamedArray], s: int) -> tuple[np.ndarray, str, int]:
    """Bit patterns of all tensors, each zero-padded to a multiple of s, concatenated; (patterns, dtype, n)."""
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise MDLError(f"mdl needs tensors of one dtype to code them exactly, got {sorted(dtypes)}")
    dtype = dtypes.pop()
    width(dtype)
    parts = []
    for a in arrays:
        bits = a.bit_patterns()
        pad = (-bits.size) % s
        parts.append(np.concatenate([bits, np.zeros(pad, dtype=bits.dtype)]) if pad else bits)
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)  # one tensor: a view, not a copy
    return flat, dtype, int(sum(a.numel for a in arrays))


def tensor_plan(arrays: Sequence[NamedArray], s: int) -> MosaicPlan:
    """The shortest mosaic code of tensors' exact distinct s-blocks (each tensor padded on its own)."""
    flat, dtype, n = padded_patterns(arrays, s)
    patterns, index = unique_rows(flat.reshape(-1, s))
    return plan(patterns, index, n, s, dtype, distinct=True, rows=flat)


def values(patterns: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values from their bit patterns (bfloat16 widened exactly to float32, q-bit levels as integers)."""
    if dtype == "bfloat16":
        return (patterns.astype(np.uint32) << 16).view(np.float32)
    if dtype.startswith("levels"):
        from ..level_grid import from_patterns

        return from_patterns(patterns, width(dtype))
    return patterns.astype(_PATTERN[WIDTH[dtype]]).view(dtype)


#: sorted keys compared at a time by :func:`unique_rows`
_SORTED_BLOCK = 1 << 20


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of an unsigned-integer matrix (sorted) and each row's index among them.

    Rows of up to 8 bytes are packed into one uint64 so numpy sorts plain
    integers; wider rows are compared as raw bytes. Much faster than
    ``np.unique(axis=0)``, which sorts structured records.
    """
    rows = np.ascontiguousarray(rows)
    width = rows.shape[1] * rows.dtype.itemsize
    if width > 8:  # compared as raw bytes, through a view: no copy
        keys = rows.view(np.dtype((np.void, width))).reshape(-1)
    else:
        keys = np.zeros(rows.shape[0], dtype=np.uint64)
        bits = np.uint64(rows.dtype.itemsize * 8)
        for j in range(rows.shape[1]):
            keys <<= bits
            keys |= rows[:, j]
    # what np.unique(keys, return_inverse=True) gives, in place where it can be, so the working memory stays a
    # few times the keys; an unstable sort (in place, no buffer) serves, since rows with one key are equal
    perm = np.argsort(keys)
    new = np.empty(keys.size, dtype=bool)  # where the sorted keys change, a block of them at a time
    new[:1] = True
    for lo in range(1, keys.size, _SORTED_BLOCK):
        ahead = keys[perm[lo - 1:lo + _SORTED_BLOCK]]
        new[lo:lo + ahead.size - 1] = ahead[1:] != ahead[:-1]  # (void keys have no not_equal loop with out=)
    del keys
    kind = np.int32 if rows.shape[0] < 1 << 31 else np.int64
    group = np.cumsum(new, dtype=kind)
    group -= 1
    inverse = np.empty(rows.shape[0], dtype=kind)
    inverse[perm] = group
    del group
    first = perm[new]
    del perm, new
    return rows[first], inverse


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal prefix-code lengths (bits) for symbols with these positive counts.

    Two-queue Huffman on the sorted counts (internal nodes are created in
    nondecreasing weight, so no heap is needed); depths then follow from
    the parent links with vectorised passes.
    """
    k = counts.size
    if k == 1:
        return np.ones(1, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    leaves = counts[order].tolist()
    weight = leaves + [0] * (k - 1)
    parent = np.zeros(2 * k - 1, dtype=np.int64)
    li, ni, nxt = 0, k, k  # next leaf, next unmerged internal node, next id
    for _ in range(k - 1):
        pair = []
        for _ in range(2):
            if li < k and (ni >= nxt or leaves[li] <= weight[ni]):
                pair.append(li)
                li += 1
            else:
                pair.append(ni)
                ni += 1
        a, b = pair
        weight[nxt] = weight[a] + weight[b]
        parent[a] = parent[b] = nxt
        nxt += 1
    root = 2 * k - 2
    depth = np.zeros(2 * k - 1, dtype=np.int64)
    cur = np.arange(2 * k - 1)
    active = cur != root
    while active.any():
        depth[active] += 1
        cur[active] = parent[cur[active]]
        active = cur != root
    out = np.empty(k, dtype=np.int64)
    out[order] = depth[:k]
    return out


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords for lengths already sorted ascending."""
    codes = np.zeros(lengths.size, dtype=np.uint64)
    code, prev = 0, int(lengths[0])
    for i, length in enumerate(lengths.tolist()):
        if i:
            code = (code + 1) << (length - prev)
        codes[i], prev = code, length
    return codes


def encode(p: MosaicPlan, prefix: bytes = b"") -> bytes:
    """Write the code described by ``p`` after ``prefix``; ``len(result) * 8 == p.total_bits`` + 8 x the prefix.
    The bits are packed a block at a time, so writing holds about the code itself, not a byte per bit."""
    out = BitWriter(prefix + p.header())
    out.fixed(p.patterns.reshape(-1), p.q)
    if not p.raw and p.lengths is None:
        out.fixed(p.symbols, index_width(p.k_used))
    elif not p.raw:
        codes = _canonical_codes(p.lengths)
        block = 1 << 20
        for lo in range(0, p.symbols.size, block):  # the codewords of a block of symbols at a time
            part = p.symbols[lo:lo + block]
            out.variable(codes[part], p.lengths[part])
    return out.getvalue()


def _pattern_dtype(q: int) -> Any:
    """The smallest unsigned type holding q-bit patterns."""
    return next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if q <= 8 * np.dtype(t).itemsize)


def decode(data: bytes, max_values: int = MAX_VALUES) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Inverse of :func:`encode`: (motif patterns k x s, block index of length m, s, dtype).

    A code claiming more than ``max_values`` values (m x s, padding included) is refused before anything is
    allocated. The other bounds are what the encoder can emit: every motif value costs at least one bit, and
    so does every block's index, except with a single motif, whose index costs nothing (a constant tensor of
    any size codes to a few bytes), so there only ``max_values`` bounds m.
    """
    buf = memoryview(bytes(data))
    pos = 0
    fields = []
    try:
        while len(fields) < 6:
            value, pos = read_varint(buf, pos)
            fields.append(value)
            if len(fields) == 3 and value != LEVELS_CODE:
                fields.append(0)  # a float dtype: no q field
        m, s, dcode, q, k, mode = fields
        if dcode == LEVELS_CODE and 1 <= q <= 64:
            dtype = f"levels{q}"
        elif dcode in DTYPES:
            dtype = DTYPES[dcode]
        else:
            raise CorruptMosaicError("corrupt mosaic code: bad value type")
        if s < 1 or k < 1 or mode not in (0, 1, 2) or (mode == 2 and k != m) \
                or max(m, s, k) >= 1 << 40 \
                or k * s > 8 * len(buf) or (m > 8 * len(buf) and not (mode == 0 and k == 1)):
            raise CorruptMosaicError("corrupt mosaic code: bad header")
        if m * s > max_values:
            raise CorruptMosaicError(f"mosaic code claims {m * s:,} values, more than max_values={max_values:,} "
                                     "(pass max_values to decode more)")
        hist = []
        if mode == 1:
            lmax, pos = read_varint(buf, pos)
            if lmax > MAX_CODEWORD:
                raise CorruptMosaicError("corrupt mosaic code: bad code-length histogram")
            for _ in range(lmax):
                c, pos = read_varint(buf, pos)
                hist.append(c)
    except IndexError:
        raise CorruptMosaicError("corrupt mosaic code: truncated header") from None
    q = width(dtype)
    raw = np.frombuffer(buf[pos:], dtype=np.uint8)
    size = 8 * raw.size
    tbits = k * s * q
    if size < tbits:
        raise CorruptMosaicError("corrupt mosaic code: truncated motif table")
    patterns = read_fixed(raw, 0, k * s, q, _pattern_dtype(q)).reshape(k, s)
    kind = np.int32 if k < 1 << 31 else np.int64  # block indices: 4 bytes each where they fit
    if mode == 2:
        return patterns, np.arange(m, dtype=kind), s, dtype
    if mode == 0:
        w = index_width(k)
        if size - tbits < m * w:
            raise CorruptMosaicError("corrupt mosaic code: truncated mosaic")
        index = read_fixed(raw, tbits, m, w, kind)
    else:
        lengths = np.repeat(np.arange(1, len(hist) + 1), hist)
        if lengths.size != k:
            raise CorruptMosaicError("corrupt mosaic code: code-length histogram does not match k")
        index = _huffman_decode(raw, tbits, lengths, m, kind)
    if index.size and index.max() >= k:
        raise CorruptMosaicError("corrupt mosaic code: motif index out of range")
    return patterns, index, s, dtype


def _huffman_decode(raw: np.ndarray, start: int, lengths: np.ndarray, m: int, kind: Any = np.int64) -> np.ndarray:
    """Decode m canonical Huffman codewords from bit ``start`` of the packed bytes ``raw``, vectorised, one
    window of BIT_BLOCK bit positions at a time (working memory: the window, not the stream).

    Every position of a window is decoded as if a codeword started there; the chain of real starts (the
    window's first, then each start plus its codeword length) is then followed for the window's symbols at
    once by pointer doubling, and the next window starts where its last codeword ends.
    """
    lmax = int(lengths.max())
    aligned = _canonical_codes(lengths) << (np.uint64(lmax) - lengths.astype(np.uint64))
    total = 8 * raw.size
    out = np.empty(m, dtype=kind)
    pos, done = start, 0
    while done < m:
        size = min(BIT_BLOCK, total - pos)
        if size <= 0:
            raise CorruptMosaicError("corrupt mosaic code: truncated mosaic")
        bits = bits_at(raw, pos, size + lmax).astype(np.uint64)
        window = np.zeros(size, dtype=np.uint64)
        for j in range(lmax):
            window = (window << np.uint64(1)) | bits[j:j + size]
        del bits
        # canonical codewords left-aligned to lmax bits are sorted, so the codeword starting at a position is
        # the last one not above the window
        sym_at = np.searchsorted(aligned, window, side="right").astype(np.int64) - 1
        del window
        jump = np.append(np.minimum(np.arange(size, dtype=np.int64) + lengths[sym_at], size), size)
        want = min(m - done, size)  # every codeword takes a bit at least
        starts = np.zeros(want, dtype=np.int64)
        i = np.arange(want)
        bit = 0
        while (1 << bit) < want:
            sel = ((i >> bit) & 1) == 1
            starts[sel] = jump[starts[sel]]
            jump = jump[jump]
            bit += 1
        starts = starts[starts < size]  # the chain leaves the window once: the rest start in the next one
        got = sym_at[starts]
        out[done:done + got.size] = got
        done += got.size
        pos += int(starts[-1]) + int(lengths[got[-1]])
    if pos > total:
        raise CorruptMosaicError("corrupt mosaic code: truncated mosaic")
    return out
