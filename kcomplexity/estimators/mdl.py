"""Minimum description length of a mosaic: k motifs of s values + one motif index per block.

For n values in m blocks of size s built from k motifs at q bits a value:

* ``paper``: L = min(k*s*q + m*ceil(log2 k), n*q) bits (the MoMos paper's
  bound, or the raw values when those are shorter, the flag saying which
  being the bound's O(1)); relative algorithmic compression RAC = n*q / L,
  so RAC >= 1 for any tensor.
* ``coded``: the length of a real lossless code of the same weights that
  adapts to motif usage (:mod:`kcomplexity.mosaic_code`): never more than
  ``paper`` plus a header of about ten bytes, much less when usage is skewed.

Any tensor can be scored: its distinct blocks of size s are found exactly
(no fitting, no loss); a tensor without repeated blocks costs its n*q bits
(the raw code) plus a header. A MoMos ``Mosaic`` (anything with ``motifs``, ``index``, ``s`` and
``sizes``) is scored from its own motif table without recomputing blocks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import mosaic_code
from ..errors import EstimatorSettingError, MDLError
from ..sources import NamedArray, make_named, open_source
from .base import Context, Estimate, Estimator, Setting, register

_PATTERN = {16: np.uint16, 32: np.uint32, 64: np.uint64}


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
    q: int            #: bits per motif value
    paper_bits: int
    coded_bits: int
    counts: np.ndarray = field(repr=False)  #: usage of each used distinct motif
    _plan: mosaic_code.MosaicPlan | None = field(default=None, repr=False)

    @property
    def rac(self) -> float:
        """Relative algorithmic compression of the paper: n*q / paper_bits."""
        return self.n * self.q / self.paper_bits

    @property
    def coded_rac(self) -> float:
        """n*q / coded_bits: the same ratio for the real code."""
        return self.n * self.q / self.coded_bits

    def encode(self) -> bytes:
        """The code itself; ``len(encode()) * 8 == coded_bits``."""
        if self._plan is None:
            raise MDLError(f"encode() needs q equal to the width of the stored values; this MDL used q={self.q}")
        return mosaic_code.encode(self._plan)


def decode(data: bytes, sizes: Sequence[int] | None = None) -> np.ndarray | list[np.ndarray]:
    """Decode :meth:`MDL.encode` output back to values.

    Without ``sizes``: the padded flat vector of m*s values. With the
    per-tensor element counts (the layout the decoder knows), a list of
    flat arrays with padding removed. bfloat16 comes back as float32 values.
    """
    patterns, index, s, dtype = mosaic_code.decode(data)
    flat = _values(patterns[index].reshape(-1), dtype)
    if sizes is None:
        return flat
    out, pos = [], 0
    for size in sizes:
        out.append(flat[pos:pos + size])
        pos += -(-int(size) // s) * s
    if pos != flat.size:
        raise MDLError(f"layout of {len(sizes)} tensors needs {pos} values, the code holds {flat.size}")
    return out


def _values(patterns: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (patterns.astype(np.uint32) << 16).view(np.float32)
    return patterns.astype(_PATTERN[mosaic_code.WIDTH[dtype]]).view(dtype)


def mdl(source_or_mosaic: Any, s: int | None = None, q: int | None = None, include_buffers: bool = False) -> MDL:
    """Description length of weights as a mosaic of s-blocks, in bits.

    A Mosaic (from ``momos.project``) supplies s, its motifs and its block
    index. Anything else is read like ``score()`` reads it (all tensors
    together, each zero-padded to a multiple of s on its own) and ``s`` is
    required. ``q`` defaults to the width of the stored values (32 for
    float32); a smaller q (e.g. after q-bit quantisation-aware training)
    gives the formula lengths only.
    """
    from_mosaic = _is_mosaic(source_or_mosaic)
    if from_mosaic:
        mos = source_or_mosaic
        s = int(mos.s)
        table = make_named("motifs", mos.motifs, allow_nonfinite=True)
        index = np.asarray(_numpy(mos.index), dtype=np.int64)
        n = int(sum(mos.sizes))
        dtype = table.dtype
        patterns = table.bit_patterns().reshape(-1, s)
        k = int(patterns.shape[0])
    else:
        if s is None:
            raise MDLError("mdl() of a tensor or model needs the block size s")
        s = _check_s(s)
        arrays = _arrays(source_or_mosaic, include_buffers)
        largest = max(a.numel for a in arrays)
        if s > largest:  # every block would be mostly padding; the padded copy could exhaust memory
            raise MDLError(f"block size s={s} exceeds the largest tensor ({largest:,} values); use s <= {largest:,}")
        patterns_flat, dtype, n = _padded_patterns(arrays, s)
        patterns, index = mosaic_code.unique_rows(patterns_flat.reshape(-1, s))
        k = int(patterns.shape[0])
    width = mosaic_code.WIDTH.get(dtype)
    if width is None:
        raise MDLError(f"mdl codes float16/bfloat16/float32/float64 values, got {dtype}")
    q = width if q is None else int(q)
    if not 1 <= q <= 64:
        raise MDLError(f"q (bits per motif value) must be in 1..64, got {q}")
    m = int(index.size)
    # a sampled motif table may repeat rows; blocks found by unique_rows are already distinct
    plan = mosaic_code.plan(patterns, index, n, s, dtype, distinct=not from_mosaic)
    if q == width:
        coded, kept = plan.total_bits, plan
    else:
        # same code with q-bit values in the table: header unchanged, table shrinks
        coded, kept = 8 * (len(plan.header()) + (plan.body_bits() - plan.k_used * s * (width - q) + 7) // 8), None
    # a mosaic never has to cost more than the raw values: the "+ O(1)" of the paper's bound holds the flag
    return MDL(n=n, m=m, s=s, k=k, q=q, paper_bits=min(paper_bits(k, s, q, m), n * q), coded_bits=int(coded),
               counts=plan.usage, _plan=kept)


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


def _check_s(s: Any) -> int:
    if isinstance(s, bool) or int(s) != s or int(s) <= 0:
        raise MDLError(f"block size s must be a positive integer, got {s}")
    return int(s)


def _padded_patterns(arrays: Sequence[NamedArray], s: int) -> tuple[np.ndarray, str, int]:
    """Bit patterns of all tensors, each zero-padded to a multiple of s, concatenated."""
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise MDLError(f"mdl needs tensors of one dtype to code them exactly, got {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype not in mosaic_code.WIDTH:
        raise MDLError(f"mdl codes float16/bfloat16/float32/float64 values, got {dtype}")
    parts = []
    for a in arrays:
        bits = a.bit_patterns()
        pad = (-bits.size) % s
        parts.append(np.concatenate([bits, np.zeros(pad, dtype=bits.dtype)]) if pad else bits)
    return np.concatenate(parts), dtype, int(sum(a.numel for a in arrays))


class MDLEstimator(Estimator):
    """Registered as ``mdl`` (the real code, default) and ``mdl-paper`` (the paper's bound)."""

    kind = "code length"

    def __init__(self, s: int = 2, q: int | None = None, code: str = "coded") -> None:
        if code not in ("coded", "paper"):
            raise EstimatorSettingError(f"mdl code must be 'coded' or 'paper', got {code!r}")
        try:
            self.s = _check_s(s)
        except MDLError as exc:
            raise EstimatorSettingError(str(exc)) from None
        self.q, self.code = q, code
        self.name = "mdl" if code == "coded" else "mdl-paper"
        self.description = ("mosaic of exact s-blocks: motif table + usage-adaptive code of the block indices"
                            if code == "coded" else "mosaic of exact s-blocks, the paper's bound min(k*s*q + m*ceil(log2 k), n*q)")

    def settings(self) -> dict[str, Any]:
        return {"s": self.s, "q": self.q if self.q is not None else "dtype width", "code": self.code}

    def _pick(self, result: MDL) -> float:
        return float(result.coded_bits if self.code == "coded" else result.paper_bits)

    def _bits(self, a: NamedArray) -> float:
        return self._pick(mdl(a, self.s, self.q))

    def bits_whole(self, arrays: Sequence[NamedArray]) -> float:
        """All tensors as one mosaic, each padded on its own (as the MoMos projection does)."""
        return self._pick(mdl(list(arrays), self.s, self.q))

    def estimate_whole(self, arrays: Sequence[NamedArray], context: Context | None = None) -> Estimate:
        """As :meth:`bits_whole`, scoring ``context.mosaic`` itself when its block size is ``s``.

        ``context.q`` (q-bit weights) applies unless this estimator fixes q;
        details hold the paper's ``rac`` and ``paper_bits``.
        """
        context = context or Context()
        q = self.q if self.q is not None else context.q
        mosaic = context.mosaic
        result = (mdl(mosaic, q=q) if mosaic is not None and int(mosaic.s) == self.s
                  else mdl(list(arrays), self.s, q))
        return Estimate(self._pick(result), {"rac": result.rac, "paper_bits": result.paper_bits})


_MDL_SETTINGS = {"s": Setting(int, ">= 1", lambda v: v >= 1),
                 "q": Setting(int, "1..64 (default: the dtype width)", lambda v: 1 <= v <= 64, optional=True)}
register("mdl", lambda **kw: MDLEstimator(code="coded", **kw), _MDL_SETTINGS)
register("mdl-paper", lambda **kw: MDLEstimator(code="paper", **kw), _MDL_SETTINGS)
