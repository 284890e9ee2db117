"""Minimum description length of a mosaic: k motifs of s values + one motif index per block.

For n values in m blocks of size s built from k motifs at q bits a value:

* ``paper``: L = min(k*s*q + m*ceil(log2 k), n*q) bits (the MoMos paper's
  bound, or the raw values when those are shorter, the flag saying which
  being the bound's O(1)); relative algorithmic compression RAC = n*q / L,
  so RAC >= 1 for any tensor.
* ``coded``: the length of a real lossless code of the same weights that
  adapts to motif usage (:mod:`kcomplexity.codecs.mosaic`): never more than
  ``paper`` plus a header of about ten bytes, much less when usage is skewed.

Any tensor can be scored: its distinct blocks of size s are found exactly
(no fitting, no loss); a tensor without repeated blocks costs its n*q bits
(the raw code) plus a header. A MoMos ``Mosaic`` (anything with ``motifs``, ``index``, ``s`` and
``sizes``) is scored from its own motif table without recomputing blocks.

q-bit weights (quantisation-aware training): with ``q`` below the stored
width, tensors that are exactly integer levels times one scale are coded
as a mosaic of q-bit level blocks plus the scale; the rest keep their width
(both parts in one code, see :func:`mdl`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import level_grid
from ..codecs import mosaic as mosaic_code
from ..codecs.bits import read_varint, varint
from ..errors import CorruptMosaicError, EstimatorSettingError, MDLError, NotApplicableError
from ..sources import NamedArray, make_named, open_source
from .base import Context, Estimate, Estimator, Setting, register



def paper_bits(k: int, s: int, q: int, m: int) -> int:
    """The MoMos paper's description length k*s*q + m*ceil(log2 k), in bits."""
    return k * s * q + m * mosaic_code.index_width(k)


@dataclass(frozen=True)
class MDL:
    """Description lengths of weights seen as a mosaic, in bits."""

    n: int            #: real (unpadded) values
    m: int            #: blocks
    s: int            #: block size
    k: int            #: motifs (as sampled for a Mosaic; distinct blocks for a plain tensor)
    q: int            #: bits per motif value (of the q-bit tensors when some are coded on a q-bit grid)
    paper_bits: int
    coded_bits: int
    counts: np.ndarray = field(repr=False)  #: usage of each used distinct motif
    raw_bits: int = 0  #: the values written out plainly (n*q, or per part with the grids' scales)
    _encode: Callable[[], bytes] | None = field(default=None, repr=False)

    @property
    def rac(self) -> float:
        """Relative algorithmic compression of the paper: raw bits (n*q) / paper_bits."""
        return (self.raw_bits or self.n * self.q) / self.paper_bits

    @property
    def coded_rac(self) -> float:
        """raw bits / coded_bits: the same ratio for the real code."""
        return (self.raw_bits or self.n * self.q) / self.coded_bits

    def encode(self) -> bytes:
        """The code itself; ``len(encode()) * 8 == coded_bits``."""
        if self._encode is None:
            raise MDLError("this MDL has no code to write")
        return self._encode()


#: first byte of a code with a q-bit grid part; a plain mosaic code starts with m >= 1
_MIXED = 0
_FLOAT, _GRID32, _GRID64 = 0, 1, 2
_SCALE_DTYPE = {_GRID32: np.dtype("<f4"), _GRID64: np.dtype("<f8")}


def decode(data: bytes, sizes: Sequence[int] | None = None) -> np.ndarray | list[np.ndarray]:
    """Decode :meth:`MDL.encode` output back to values.

    Without ``sizes``: the padded flat vector of m*s values. With the
    per-tensor element counts (the layout the decoder knows), a list of
    flat arrays with padding removed. bfloat16 comes back as float32 values.
    A code with q-bit grid tensors (``mdl(..., q=...)`` of quantised
    weights) needs ``sizes``.
    """
    data = bytes(data)
    if data[:1] == bytes([_MIXED]):
        if sizes is None:
            raise MDLError("a code with q-bit grid tensors decodes only with the layout: pass sizes")
        return _decode_mixed(data, [int(x) for x in sizes])
    patterns, index, s, dtype = mosaic_code.decode(data)
    flat = mosaic_code.values(patterns[index].reshape(-1), dtype)
    return flat if sizes is None else _split(flat, sizes, s)


def _split(flat: np.ndarray, sizes: Sequence[int], s: int) -> list[np.ndarray]:
    out, pos = [], 0
    for size in sizes:
        out.append(flat[pos:pos + size])
        pos += -(-int(size) // s) * s
    if pos != flat.size:
        raise MDLError(f"layout of {len(sizes)} tensors needs {pos} values, the code holds {flat.size}")
    return out


def mdl(source_or_mosaic: Any, s: int | None = None, q: int | None = None, include_buffers: bool = False) -> MDL:
    """Description length of weights as a mosaic of s-blocks, in bits.

    A Mosaic (from ``momos.project``) supplies s, its motifs and its block
    index. Anything else is read like ``score()`` reads it (all tensors
    together, each zero-padded to a multiple of s on its own) and ``s`` is
    required. ``q`` defaults to the width of the stored values (32 for
    float32).

    A smaller ``q`` describes q-bit weights that exist: every tensor that is
    exactly fl(level * scale) with q-bit symmetric integer levels (what
    quantisation-aware training computes with) is coded as a mosaic of
    q-bit level blocks plus its scale; the other tensors (biases QAT left in
    float, norms) keep their own width. The result is a real code
    (``encode()`` / :func:`decode`); ``q`` falls back to the dtype width
    when no tensor lies on a q-bit grid. For a Mosaic, whose motifs are
    float, ``paper_bits`` is the paper's bound with q-bit motif values (the
    official code's accounting of the latent mosaic) while ``coded_bits``
    stays the real code of the stored motifs.
    """
    if q is not None:
        q = _check_q(q)
    if _is_mosaic(source_or_mosaic):
        mos = source_or_mosaic
        table = make_named("motifs", mos.motifs, allow_nonfinite=True)
        width = _width(table.dtype)
        index = np.asarray(_numpy(mos.index), dtype=np.int64)
        # a sampled motif table may repeat rows: plan merges them
        plan = mosaic_code.plan(table.bit_patterns().reshape(-1, int(mos.s)), index, int(sum(mos.sizes)),
                                int(mos.s), table.dtype)
        return _result(plan, q=q or width, k=int(table.numel // int(mos.s)))
    if s is None:
        raise MDLError("mdl() of a tensor or model needs the block size s")
    s = _check_s(s)
    arrays = _arrays(source_or_mosaic, include_buffers)
    check_block_size(s, [a.numel for a in arrays])
    if q is not None and {mosaic_code.WIDTH.get(a.dtype) for a in arrays} != {q}:
        return _mdl_on_grids(arrays, s, q)
    return _plain(arrays, s)


def _plain(arrays: Sequence[NamedArray], s: int) -> MDL:
    """Exact distinct s-blocks of the stored values, at their own width."""
    dtypes = {a.dtype for a in arrays}
    width = _width(dtypes.pop()) if len(dtypes) == 1 else 0  # mixed dtypes: the codec says why it refuses
    plan = mosaic_code.tensor_plan(arrays, s)
    return _result(plan, q=width, k=int(plan.usage.size))


def _width(dtype: str) -> int:
    width = mosaic_code.WIDTH.get(dtype)
    if width is None:  # an integer or bool tensor (a step counter, position ids): not this code's to take
        raise MDLNotApplicable(f"mdl codes float16/bfloat16/float32/float64 values, got {dtype}")
    return width


def _result(plan: mosaic_code.MosaicPlan, q: int, k: int) -> MDL:
    m = plan.m
    # a mosaic never has to cost more than the raw values: the "+ O(1)" of the paper's bound holds the flag
    return MDL(n=plan.n, m=m, s=plan.s, k=k, q=q, paper_bits=min(paper_bits(k, plan.s, q, m), plan.n * q),
               coded_bits=plan.total_bits, counts=plan.usage, raw_bits=plan.n * q,
               _encode=lambda: mosaic_code.encode(plan))


def _mdl_on_grids(arrays: Sequence[NamedArray], s: int, q: int) -> MDL:
    """Tensors on an exact q-bit grid as one mosaic of q-bit levels; the rest as a float mosaic."""
    kinds, scales, grid_rows, grid_n, floats = [], [], [], 0, []
    for a in arrays:
        found = level_grid.find_grid(a.data, q) if a.dtype in ("float32", "float64") else None
        if found is None:
            kinds.append(_FLOAT)
            floats.append(a)
            continue
        levels, scale = found
        kinds.append(_GRID32 if a.dtype == "float32" else _GRID64)
        scales.append(np.asarray(scale, dtype=_SCALE_DTYPE[kinds[-1]]).tobytes())
        rows = level_grid.to_patterns(levels.reshape(-1), q)
        pad = (-rows.size) % s
        grid_rows.append(np.concatenate([rows, np.zeros(pad, dtype=rows.dtype)]) if pad else rows)
        grid_n += a.numel
    if not scales:  # nothing is q-bit: the weights that exist are the stored floats
        return _plain(arrays, s)
    uniq, index = mosaic_code.unique_rows(np.concatenate(grid_rows).reshape(-1, s))
    grid = _result(mosaic_code.plan(uniq, index, grid_n, s, f"levels{q}", distinct=True), q=q, k=int(uniq.shape[0]))
    rest = _plain(floats, s) if floats else None
    head = bytes([_MIXED]) + varint(len(arrays)) + bytes(kinds) + b"".join(scales) + varint(grid.coded_bits // 8)
    side = 8 * len(head)
    parts = [grid] + ([rest] if rest else [])

    def encode() -> bytes:
        return head + b"".join(p.encode() for p in parts)

    return MDL(n=sum(p.n for p in parts), m=sum(p.m for p in parts), s=s, k=sum(p.k for p in parts), q=q,
               paper_bits=side + sum(p.paper_bits for p in parts), coded_bits=side + sum(p.coded_bits for p in parts),
               counts=np.concatenate([p.counts for p in parts]), raw_bits=side + sum(p.raw_bits for p in parts),
               _encode=encode)


def _decode_mixed(data: bytes, sizes: list[int]) -> list[np.ndarray]:
    buf = memoryview(data)
    try:
        count, pos = read_varint(buf, 1)
        if count != len(sizes):
            raise MDLError(f"the code holds {count} tensors, the layout names {len(sizes)}")
        kinds = list(buf[pos:pos + count])
        pos += count
        if len(kinds) != count or any(k not in (_FLOAT, *_SCALE_DTYPE) for k in kinds):
            raise CorruptMosaicError("corrupt mosaic code: bad tensor kinds")
        scales = []
        for kind in kinds:
            if kind != _FLOAT:
                size = _SCALE_DTYPE[kind].itemsize
                if pos + size > len(buf):
                    raise CorruptMosaicError("corrupt mosaic code: truncated scales")
                scales.append(np.frombuffer(buf[pos:pos + size], dtype=_SCALE_DTYPE[kind])[0])
                pos += size
        grid_len, pos = read_varint(buf, pos)
    except IndexError:
        raise CorruptMosaicError("corrupt mosaic code: truncated header") from None
    if pos + grid_len > len(buf):
        raise CorruptMosaicError("corrupt mosaic code: truncated level mosaic")
    patterns, index, s, dtype = mosaic_code.decode(buf[pos:pos + grid_len])
    if not dtype.startswith("levels"):
        raise CorruptMosaicError("corrupt mosaic code: the grid part does not hold levels")
    grid_sizes = [n for n, k in zip(sizes, kinds) if k != _FLOAT]
    float_sizes = [n for n, k in zip(sizes, kinds) if k == _FLOAT]
    levels = iter(_split(mosaic_code.values(patterns[index].reshape(-1), dtype), grid_sizes, s))
    floats = iter(decode(buf[pos + grid_len:], float_sizes) if float_sizes else [])
    scale_it = iter(scales)
    out = []
    for kind in kinds:
        if kind == _FLOAT:
            out.append(next(floats))
        else:
            scale = next(scale_it)
            out.append((next(levels).astype(scale.dtype) * scale).astype(scale.dtype))
    return out


def _arrays(source: Any, include_buffers: bool) -> list[NamedArray]:
    if isinstance(source, NamedArray):
        return [source]
    if isinstance(source, (list, tuple)) and source and all(isinstance(a, NamedArray) for a in source):
        return list(source)
    return list(open_source(source, include_buffers=include_buffers))


def _is_mosaic(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("motifs", "index", "s", "sizes"))


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _check_q(q: Any) -> int:
    if isinstance(q, bool) or int(q) != q or not 1 <= int(q) <= 64:
        raise MDLError(f"q (bits per motif value) must be in 1..64, got {q}")
    return int(q)


class MDLNotApplicable(MDLError, NotApplicableError):
    """A tensor the mosaic code does not take (integers, bool): a missing cell in a report, not a failure."""


#: a block size up to this pads small tensors (a one-element scale) at no real cost; past it, s must fit a tensor
PAD_FREE = 4096


def check_block_size(s: int, sizes: Sequence[int]) -> None:
    """MDLError when block size ``s`` exceeds every tensor and PAD_FREE (each block would be mostly padding,
    and the padded copy could exhaust memory)."""
    largest = max(sizes, default=0)
    if s > max(largest, PAD_FREE):
        raise MDLError(f"block size s={s} exceeds the largest tensor ({largest:,} values); use s <= {largest:,}")


def _check_s(s: Any) -> int:
    if isinstance(s, bool) or int(s) != s or int(s) <= 0:
        raise MDLError(f"block size s must be a positive integer, got {s}")
    return int(s)


class MDLEstimator(Estimator):
    """Registered as ``mdl`` (the real code, default) and ``mdl-paper`` (the paper's bound)."""

    kind = "code length"
    #: the mosaic the weights were projected to (scored as it is), and q-bit weights' q
    reads = ("mosaic", "q")

    def __init__(self, s: int = 2, q: int | None = None, code: str = "coded") -> None:
        if code not in ("coded", "paper"):
            raise EstimatorSettingError(f"mdl code must be 'coded' or 'paper', got {code!r}")
        self.name = "mdl" if code == "coded" else "mdl-paper"
        # the paper's bound leaves out the header a decoder needs (k, s, the raw flag): a reference, not a code
        self.kind = "code length" if code == "coded" else "reference"
        v = self._validated(s=s, q=q)
        self.s, self.q, self.code = v["s"], v["q"], code
        self.description = ("mosaic of exact s-blocks: motif table + usage-adaptive code of the block indices"
                            if code == "coded" else "mosaic of exact s-blocks, the paper's bound min(k*s*q + m*ceil(log2 k), n*q)")

    def facts(self) -> dict[str, Any]:
        return {"code": self.code}

    def _pick(self, result: MDL) -> float:
        return float(result.coded_bits if self.code == "coded" else result.paper_bits)

    def check_sizes(self, sizes: Sequence[int]) -> None:
        check_block_size(self.s, sizes)

    def _bits(self, a: NamedArray) -> float:
        return self._pick(mdl(a, self.s, self.q))

    def encode(self, a: NamedArray) -> bytes:
        """The mosaic code of one tensor (``mdl`` only; the paper's bound writes no code)."""
        if self.code != "coded":
            return super().encode(a)
        return mdl(a, self.s, self.q).encode()

    def decode(self, data: bytes, like: NamedArray) -> NamedArray:
        """The tensor back bit for bit; its element count and dtype are the decoder's side information."""
        if self.code != "coded":
            return super().decode(data, like)
        (flat,) = decode(data, sizes=[like.numel])
        if like.dtype == "bfloat16":  # decoded exactly as float32: the top 16 bits are the pattern
            values = (np.ascontiguousarray(flat, np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
        else:
            values = np.asarray(flat).astype(like.data.dtype)
        return NamedArray(like.name, values.reshape(like.shape), like.dtype)

    def bits_whole(self, arrays: Sequence[NamedArray]) -> float:
        """All tensors as one mosaic, each padded on its own (as the MoMos projection does)."""
        return self._pick(mdl(list(arrays), self.s, self.q))

    def estimate_whole(self, arrays: Sequence[NamedArray], context: Context | None = None) -> Estimate:
        """As :meth:`bits_whole`, scoring ``context.extra["mosaic"]`` itself when its block size is ``s``.

        ``context.extra["q"]`` (q-bit weights) applies unless this estimator fixes q;
        details hold the paper's ``rac`` and ``paper_bits``.
        """
        context = context or Context()
        q = self.q if self.q is not None else context.get("q")
        mosaic = context.get("mosaic")
        result = (mdl(mosaic, q=q) if mosaic is not None and int(mosaic.s) == self.s
                  else mdl(list(arrays), self.s, q))
        return Estimate(self._pick(result), {"rac": result.rac, "paper_bits": result.paper_bits, "q": result.q})


_MDL_SETTINGS = {"s": Setting(int, ">= 1", lambda v: v >= 1),
                 "q": Setting(int, "1..64 (default: the dtype width)", lambda v: 1 <= v <= 64, optional=True)}
MDLEstimator.SETTINGS = _MDL_SETTINGS
register("mdl", lambda **kw: MDLEstimator(code="coded", **kw), _MDL_SETTINGS)
register("mdl-paper", lambda **kw: MDLEstimator(code="paper", **kw), _MDL_SETTINGS)
