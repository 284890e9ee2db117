"""Block Decomposition Method (BDM), vectorised, with pybdm 0.1.0's exact semantics.

BDM(X) = sum over distinct blocks b of [CTM(b) + log2(count(b))], in bits.

* Blocks are counted by their raw symbols, so 0...0 and 1...1 are two
  blocks; the CTM value is looked up by the relabelled block (symbols
  renumbered by first appearance). A block missing from the table gets the
  maximum CTM of its shape + 1.
* Partitions: ``ignore`` (drop partial blocks), ``recursive`` (re-slice
  leftovers into smaller square blocks down to ``min_length``), and
  ``correlated`` (sliding window moved by ``shift``).

Also the weight views registered as estimators: ``bdm`` (signs, the MoMos
paper's metric), ``bdm-planes`` (QuBD's bit-planes) and ``bdm-k``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import ctm
from ..errors import BDMError, NotApplicableError
from ..sources import NamedArray
from ..views import bit_planes, matrix_view, quantise_k, quantise_uniform, sign_bits
from .base import Estimator, Setting, register

PARTITIONS = ("ignore", "recursive", "correlated")
#: alphabets with a 1-D CTM table (2-D tables are binary only)
SYMBOLS_1D = (2, 4, 5, 6, 9)
_RELABEL_CHUNK = 1 << 16


def bdm(X: Any, nsymbols: int = 2, partition: str = "ignore", block: int | None = None,
        shift: int = 1, min_length: int = 2) -> float:
    """BDM of a 1-D or 2-D array of symbols 0..nsymbols-1, in bits.

    ``block`` is the block length (1-D, default 12) or square block side
    (2-D, default 4). ``shift`` applies to ``correlated``, ``min_length`` to
    ``recursive``. Matches pybdm 0.1.0 to ~1e-12 relative.
    """
    groups = _decompose(X, nsymbols, partition, block, shift, min_length)
    total = 0.0
    for shape, blocks in groups.items():
        tab = ctm.table(len(shape), nsymbols, shape)
        codes, counts = _count(blocks, nsymbols)
        total += float(np.sum(_ctm_of(tab, codes, blocks.shape[1], nsymbols) + np.log2(counts)))
    return total


def block_entropy(X: Any, nsymbols: int = 2, partition: str = "ignore", block: int | None = None,
                  shift: int = 1, min_length: int = 2) -> float:
    """Shannon entropy (bits) of the empirical distribution of raw blocks (pybdm's ``ent``)."""
    groups = _decompose(X, nsymbols, partition, block, shift, min_length)
    counts = np.concatenate([_count(b, nsymbols)[1] for b in groups.values()]).astype(np.float64)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def nbdm(X: Any, nsymbols: int = 2, partition: str = "ignore", block: int | None = None,
         min_length: int = 2) -> float:
    """Normalised BDM in [0, 1]: (BDM - min) / (max - min) over arrays of the same shape (pybdm's ``nbdm``)."""
    if partition == "correlated":
        raise BDMError("normalised BDM is not defined for the 'correlated' partition; use 'ignore' or 'recursive'")
    arr = _validate(X, nsymbols)
    side = _block_side(arr.ndim, block)
    value = bdm(arr, nsymbols, partition, side, 1, min_length)
    lo = hi = 0.0
    for shape, n in _first_level_shapes(arr.shape, side, partition).items():
        try:
            tab = ctm.table(arr.ndim, nsymbols, shape)
        except Exception:
            raise BDMError(f"normalised BDM needs a CTM table for the leftover shape {shape}; "
                           "use partition='ignore' or a size divisible by the block") from None
        lo += float(tab.values.min()) + math.log2(n)
        hi += _max_bdm(tab, n, nsymbols)
    return (value - lo) / (hi - lo)


def _validate(X: Any, nsymbols: int) -> np.ndarray:
    try:
        arr = np.asarray(X)
    except ValueError as exc:  # ragged nested lists
        raise BDMError(f"BDM takes a rectangular array of symbols ({exc})") from None
    if nsymbols not in SYMBOLS_1D:
        raise BDMError(f"nsymbols={nsymbols} has no CTM table; allowed: {', '.join(map(str, SYMBOLS_1D))} (1-D), 2 (2-D)")
    if arr.ndim not in (1, 2):
        raise BDMError(f"BDM takes 1-D or 2-D arrays, got {arr.ndim}-D with shape {arr.shape}")
    if arr.ndim == 2 and nsymbols != 2:
        raise BDMError(f"2-D BDM has a CTM table for binary data only, got nsymbols={nsymbols}")
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if arr.dtype.kind not in "iu":
        raise BDMError(f"BDM takes integer symbols 0..{nsymbols - 1}, got dtype {arr.dtype}; "
                       "quantise real values first (e.g. signs w > 0)")
    if arr.size and (arr.min() < 0 or arr.max() >= nsymbols):
        raise BDMError(f"symbols must lie in 0..{nsymbols - 1}; found values in {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8, copy=False)


def _block_side(ndim: int, block: int | None) -> int:
    top = ctm.MAX_BLOCK[ndim]
    if block is not None and (isinstance(block, bool) or not isinstance(block, (int, np.integer))):
        raise BDMError(f"block must be an integer in 1..{top}, got {block!r}")
    side = top if block is None else int(block)
    if not 1 <= side <= top:
        what = "block length" if ndim == 1 else "square block side"
        raise BDMError(f"{what} {side} has no CTM table; allowed: 1..{top} for {ndim}-D data")
    return side


def _decompose(X: Any, nsymbols: int, partition: str, block: int | None, shift: int,
               min_length: int) -> dict[tuple[int, ...], np.ndarray]:
    """Blocks grouped by shape: {shape: (nblocks, cells) uint8}."""
    if partition not in PARTITIONS:
        raise BDMError(f"unknown partition '{partition}'; allowed: {', '.join(PARTITIONS)}")
    if partition == "correlated" and int(shift) < 1:
        raise BDMError(f"shift must be a positive integer, got {shift}")
    arr = _validate(X, nsymbols)
    side = _block_side(arr.ndim, block)
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    if partition == "correlated":
        win = np.lib.stride_tricks.sliding_window_view(arr, (side,) * arr.ndim)
        win = win[::shift] if arr.ndim == 1 else win[::shift, ::shift]
        if win.size:
            groups[(side,) * arr.ndim] = [win.reshape(-1, side ** arr.ndim)]
    else:
        _grid(arr[None, ...], side, partition == "recursive", int(min_length), groups)
    out = {shape: np.concatenate(parts) for shape, parts in groups.items()}
    out = {shape: b for shape, b in out.items() if b.shape[0]}
    if not out:
        raise BDMError(f"array of shape {arr.shape} is too short for a single {'x'.join([str(side)] * arr.ndim)} "
                       f"block with partition '{partition}'; use a smaller block or partition='recursive'")
    return out


def _grid(batch: np.ndarray, side: int, recursive: bool, min_length: int,
          groups: dict[tuple[int, ...], list[np.ndarray]]) -> None:
    """Cut a batch of equal-shaped arrays into a grid of side^ndim blocks (pybdm's slicing order aside).

    With ``recursive``, the partial blocks at the edges are cut again with
    the side shrunk to their shortest dimension, as long as that is at least
    ``min_length``.
    """
    ndim = batch.ndim - 1
    dims = batch.shape[1:]
    full = [d // side for d in dims]
    if all(full):
        core = batch[(slice(None),) + tuple(slice(0, f * side) for f in full)]
        if ndim == 1:
            blocks = core.reshape(-1, side)
        else:
            p = core.shape[0]
            blocks = core.reshape(p, full[0], side, full[1], side).transpose(0, 1, 3, 2, 4).reshape(-1, side * side)
        groups.setdefault((side,) * ndim, []).append(blocks)
    if not recursive:
        return
    # leftover parts, grouped by shape: along each axis, either a full block or the remainder
    for choice in np.ndindex(*(2,) * ndim):
        if not any(choice):
            continue
        extents, slices = [], []
        for axis, rem in enumerate(choice):
            f, d = full[axis], dims[axis]
            if rem:
                extents.append((d - f * side, 1))
                slices.append(slice(f * side, d))
            else:
                extents.append((side, f))
                slices.append(slice(0, f * side))
        if any(length == 0 or count == 0 for length, count in extents):
            continue
        part = batch[(slice(None),) + tuple(slices)]
        p = part.shape[0]
        if ndim == 1:
            parts = part.reshape(p * extents[0][1], extents[0][0])
        else:
            (h, nh), (w, nw) = extents
            parts = part.reshape(p, nh, h, nw, w).transpose(0, 1, 3, 2, 4).reshape(-1, h, w)
        shrunk = min(parts.shape[1:])
        if shrunk >= min_length:
            _grid(parts, shrunk, True, min_length, groups)


def _count(blocks: np.ndarray, nsymbols: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct raw block codes (base nsymbols) and how often each occurs."""
    codes = np.zeros(blocks.shape[0], dtype=np.int64)
    for j in range(blocks.shape[1]):
        codes *= nsymbols
        codes += blocks[:, j]
    if nsymbols == 2:
        counts = np.bincount(codes, minlength=1 << blocks.shape[1])
        distinct = np.flatnonzero(counts)
        return distinct, counts[distinct]
    return np.unique(codes, return_counts=True)


def _ctm_of(tab: ctm.ShapeTable, codes: np.ndarray, cells: int, nsymbols: int) -> np.ndarray:
    if tab.dense is not None:
        return tab.dense[codes]
    return tab.lookup_relabelled(_relabel(codes, cells, nsymbols))


def _relabel(codes: np.ndarray, cells: int, nsymbols: int) -> np.ndarray:
    """Codes of blocks with symbols renumbered by first appearance ('40524' -> '01230')."""
    out = np.empty_like(codes)
    powers = nsymbols ** np.arange(cells - 1, -1, -1, dtype=np.int64)
    symbols = np.arange(nsymbols)
    for lo in range(0, codes.size, _RELABEL_CHUNK):
        c = codes[lo:lo + _RELABEL_CHUNK]
        digits = (c[:, None] // powers) % nsymbols                      # (u, cells)
        hit = digits[:, :, None] == symbols                              # (u, cells, k)
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), cells)     # (u, k)
        order = np.argsort(first, axis=1, kind="stable")
        label = np.empty_like(order)
        np.put_along_axis(label, order, np.broadcast_to(symbols, order.shape), axis=1)
        out[lo:lo + _RELABEL_CHUNK] = np.take_along_axis(label, digits, axis=1) @ powers
    return out


def _first_level_shapes(shape: tuple[int, ...], side: int, partition: str) -> dict[tuple[int, ...], int]:
    """Shapes of the first slicing and how many of each (pybdm's ``_iter_shapes``)."""
    per_axis = []
    for d in shape:
        full, rem = divmod(d, side)
        opts = [(side, full)] + ([(rem, 1)] if rem and partition == "recursive" else [])
        per_axis.append([o for o in opts if o[1]])
    out: dict[tuple[int, ...], int] = {}
    for combo in np.ndindex(*[len(o) for o in per_axis]):
        sh = tuple(per_axis[a][i][0] for a, i in enumerate(combo))
        out[sh] = out.get(sh, 0) + int(np.prod([per_axis[a][i][1] for a, i in enumerate(combo)]))
    return out


def _max_bdm(tab: ctm.ShapeTable, n: int, nsymbols: int) -> float:
    """Largest BDM of n blocks of this shape: the n most complex raw blocks, repeated cyclically."""
    cells = int(np.prod(tab.shape))
    powers = nsymbols ** np.arange(cells - 1, -1, -1, dtype=np.int64)
    distinct = ((tab.codes[:, None] // powers) % nsymbols).max(axis=1) + 1
    # raw blocks per relabelled key: nsymbols! / (nsymbols - distinct)!
    mult = np.array([math.perm(nsymbols, int(d)) for d in range(nsymbols + 1)], dtype=np.float64)[distinct]
    order = np.argsort(-tab.values, kind="stable")
    vals, mult = tab.values[order], mult[order]
    total_raw = float(mult.sum())
    if n <= total_raw:
        cum = np.cumsum(mult)
        i = int(np.searchsorted(cum, n))
        before = float(cum[i - 1]) if i else 0.0
        return float(np.dot(vals[:i], mult[:i]) + vals[i] * (n - before))
    q, r = divmod(n, int(total_raw))
    return float(np.dot(vals, mult) + r * math.log2(q + 1) + (total_raw - r) * math.log2(q))


# ----------------------------------------------------------------------------- estimators

def _bdm_1d_any_length(symbols: np.ndarray, nsymbols: int, block: int, partition: str) -> float:
    """1-D BDM; an array shorter than one block counts as a single block of its own length."""
    return bdm(symbols, nsymbols, partition, min(block, symbols.size))


class BDMSigns(Estimator):
    name = "bdm"
    kind = "proxy"
    description = "1-D binary BDM of the signs w > 0 (the MoMos paper's metric)"

    def __init__(self, block: int = 12, partition: str = "ignore") -> None:
        v = self._validated(block=block, partition=partition)
        self.block, self.partition = v["block"], v["partition"]

    def facts(self) -> dict[str, Any]:
        return {"view": "sign w>0"}

    def _bits(self, a: NamedArray) -> float:
        return _bdm_1d_any_length(sign_bits(a.values()).reshape(-1), 2, self.block, self.partition)


def _partition() -> Setting:
    return Setting(str, "one of " + ", ".join(PARTITIONS), lambda v: v in PARTITIONS)


def _block(ndim: int) -> Setting:
    top = ctm.MAX_BLOCK[ndim]
    return Setting(int, f"1..{top}", lambda v: 1 <= v <= top)


BDMSigns.SETTINGS = {"block": _block(1), "partition": _partition()}


class BDMPlanes(Estimator):
    name = "bdm-planes"
    kind = "proxy"
    description = "2-D BDM of every bit-plane of a uniform b-bit quantisation (QuBD's metric)"

    def __init__(self, bits: int = 8, clip: float | None = None, block: int = 4, partition: str = "ignore") -> None:
        v = self._validated(bits=bits, clip=clip, block=block, partition=partition)
        self.nbits, self.clip, self.block, self.partition = v["bits"], v["clip"], v["block"], v["partition"]

    def settings(self) -> dict[str, Any]:
        return {"bits": self.nbits, "clip": self.clip, "block": self.block, "partition": self.partition}

    def facts(self) -> dict[str, Any]:
        return {"view": "bit-planes"}

    def planes(self, x: Any) -> np.ndarray:
        """BDM of each bit-plane (most significant first), in bits."""
        from ..sources import as_named

        a = as_named(x)
        m = matrix_view(a)
        if m is None:
            raise NotApplicableError(f"bdm-planes needs a tensor with 2+ dims; '{a.name}' has shape {a.shape}")
        if self.partition != "recursive" and min(m.shape) < self.block:
            raise NotApplicableError(f"'{a.name}' reshaped to {m.shape} is smaller than a {self.block}x{self.block} block")
        q = quantise_uniform(m, self.nbits, self.clip)
        return np.array([bdm(p, 2, self.partition, self.block) for p in bit_planes(q, self.nbits)])

    def breakdown(self, a: NamedArray) -> dict[str, float]:
        return {f"plane{j}": float(v) for j, v in enumerate(self.planes(a))}

    def _bits(self, a: NamedArray) -> float:
        return float(self.planes(a).sum())

    def bits_whole(self, arrays: Sequence[NamedArray]) -> float:
        """Sum over the tensors it applies to: bit-planes are defined per weight matrix."""
        vals = []
        for a in arrays:
            try:
                vals.append(self._bits(a))
            except NotApplicableError:
                continue
        if not vals:
            raise NotApplicableError("bdm-planes applies to none of these tensors (all have < 2 dims or are too small)")
        return math.fsum(vals)


BDMPlanes.SETTINGS = {"bits": Setting(int, "1..16", lambda v: 1 <= v <= 16),
                      "clip": Setting(float, "a percentile in (50, 100]", lambda v: 50 < v <= 100, optional=True),
                      "block": _block(2), "partition": _partition()}


class BDMK(Estimator):
    name = "bdm-k"
    kind = "proxy"
    description = "1-D BDM of the values quantised to k equal-width bins (k in 4, 5, 6, 9)"

    def __init__(self, k: int = 4, block: int = 12, partition: str = "ignore") -> None:
        v = self._validated(k=k, block=block, partition=partition)
        self.k, self.block, self.partition = v["k"], v["block"], v["partition"]

    def facts(self) -> dict[str, Any]:
        return {"view": f"{self.k}-symbol quantisation"}

    def _bits(self, a: NamedArray) -> float:
        return _bdm_1d_any_length(quantise_k(a.values(), self.k).reshape(-1), self.k, self.block, self.partition)


BDMK.SETTINGS = {"k": Setting(int, "4, 5, 6 or 9", lambda v: v in (4, 5, 6, 9)), "block": _block(1),
                 "partition": _partition()}

register("bdm", BDMSigns)
register("bdm-planes", BDMPlanes)
register("bdm-k", BDMK)
