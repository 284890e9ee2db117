"""CTM (Coding Theorem Method) tables, read as data from the installed pybdm wheel.

pybdm ships its tables as gzip'd pickles of ``{shape: {key: ctm_bits}}``
where ``key`` is the block written as digits after *relabelling* (symbols
renumbered by first appearance). pybdm itself is never imported (it needs
``pkg_resources``); its files are located with ``importlib.metadata``.

Unpickling the 9-symbol table builds 4.5 million Python objects (4 s,
740 MB here). Instead the pickle stream is *scanned*: every entry is the
opcode sequence ``SHORT_BINUNICODE key, MEMOIZE, BINFLOAT value`` (with an
optional 9-byte FRAME opcode between opcodes), which numpy finds and decodes
in bulk. The scan then proves it missed nothing: the bytes between entries
may only be the few structural opcodes a dict-of-dicts pickle has. Any other
layout falls back to a restricted :class:`pickle.Unpickler` that admits only
``dict``, ``OrderedDict`` and ``defaultdict``. Tables are loaded once per
process, lazily.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import io
import math
import pickle
import threading
import zlib
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import CTMTableError

#: (ndim, nsymbols) -> file name inside pybdm/ctmdata
CTM_FILES = {
    (1, 2): "ctm-b2-d12.pkl.gz",
    (1, 4): "ctm-b4-d12.pkl.gz",
    (1, 5): "ctm-b5-d12.pkl.gz",
    (1, 6): "ctm-b6-d12.pkl.gz",
    (1, 9): "ctm-b9-d12.pkl.gz",
    (2, 2): "ctm-b2-d4x4.pkl.gz",
}
#: largest block side with a table, per dimensionality
MAX_BLOCK = {1: 12, 2: 4}

_SHORT_BINUNICODE, _MEMOIZE, _BINFLOAT, _FRAME = 0x8C, 0x94, 0x47, 0x95
_DIGIT0 = 0x30
_SCAN_CHUNK = 1 << 24


@dataclass(frozen=True)
class ShapeTable:
    """CTM values of every relabelled block of one shape.

    ``codes`` are the relabelled blocks as base-``nsymbols`` integers
    (row-major for 2-D), sorted; ``values`` their CTM in bits. ``missing`` is
    what a block absent from the table gets: the shape's maximum + 1.
    ``dense`` (binary tables only) maps every *raw* block code straight to
    its value, so lookups need no relabelling.
    """

    shape: tuple[int, ...]
    nsymbols: int
    codes: np.ndarray
    values: np.ndarray
    missing: float
    dense: np.ndarray | None

    def lookup_relabelled(self, codes: np.ndarray) -> np.ndarray:
        """CTM bits of relabelled block codes (missing ones get max + 1)."""
        pos = np.searchsorted(self.codes, codes)
        pos = np.minimum(pos, len(self.codes) - 1)
        hit = self.codes[pos] == codes
        return np.where(hit, self.values[pos], self.missing)


def ctm_file(ndim: int, nsymbols: int) -> Path:
    """Path of the CTM table for (ndim, nsymbols) inside the installed pybdm wheel."""
    if (ndim, nsymbols) not in CTM_FILES:
        have = ", ".join(f"{d}-D with {k} symbols" for d, k in CTM_FILES)
        raise CTMTableError(f"no CTM table for {ndim}-D data with {nsymbols} symbols; tables exist for: {have}")
    try:
        dist = importlib.metadata.distribution("pybdm")
    except importlib.metadata.PackageNotFoundError:
        raise CTMTableError("CTM tables come from the pybdm wheel, which is not installed: pip install pybdm") from None
    path = Path(dist.locate_file(f"pybdm/ctmdata/{CTM_FILES[(ndim, nsymbols)]}"))
    if not path.is_file():
        raise CTMTableError(f"pybdm is installed but its CTM file {path} is missing")
    return path


_LOCK = threading.Lock()


def table(ndim: int, nsymbols: int, shape: tuple[int, ...]) -> ShapeTable:
    """The CTM table of one block shape (loads the whole file once per process)."""
    with _LOCK:  # estimators may run in a worker thread beside user code
        tables = _load(ndim, nsymbols)
    if shape not in tables:
        have = sorted(tables)
        raise CTMTableError(f"no CTM values for blocks of shape {shape} ({nsymbols} symbols); available: {have}")
    return tables[shape]


@lru_cache(maxsize=None)
def _load(ndim: int, nsymbols: int) -> dict[tuple[int, ...], ShapeTable]:
    raw = _gunzip(ctm_file(ndim, nsymbols).read_bytes())
    parsed = scan_pickle(raw, nsymbols)
    if parsed is None:
        parsed = _from_mapping(unpickle_restricted(raw), nsymbols)
    del raw
    tables = {}
    for length in sorted(parsed):
        codes, values = parsed.pop(length)  # free each shape's arrays once its table exists
        tables[_shape(ndim, length)] = _make_table(_shape(ndim, length), nsymbols, codes, values)
    return tables


def _gunzip(data: bytes) -> bytes:
    """Decompress a gzip file in one allocation (its trailer states the size, mod 2**32)."""
    size = int.from_bytes(data[-4:], "little") or 1
    try:
        return zlib.decompress(data, wbits=31, bufsize=size)
    except zlib.error:
        return gzip.decompress(data)


def _shape(ndim: int, length: int) -> tuple[int, ...]:
    if ndim == 1:
        return (length,)
    side = math.isqrt(length)
    return (side, side)


def scan_pickle(raw: bytes, nsymbols: int) -> dict[int, tuple[np.ndarray, np.ndarray]] | None:
    """Decode a CTM pickle stream without unpickling it.

    Returns ``{key length: (codes, values)}`` with codes in file order, or
    None if the stream holds anything the scan cannot account for.
    """
    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size < 64 or b.size >= 2**31 - 64:
        return None
    # candidates found chunk by chunk with int32 offsets: peak memory stays
    # near the size of the stream itself
    found = []
    for lo in range(0, b.size, _SCAN_CHUNK):
        hit = np.flatnonzero(b[lo:lo + _SCAN_CHUNK] == _SHORT_BINUNICODE).astype(np.int32)
        hit += lo
        lens = b.take(hit + 1, mode="clip")
        found.append(hit[(lens >= 1) & (lens <= 16)])
    starts = np.concatenate(found)
    del found
    lengths = b[starts + 1].astype(np.int32)
    # MEMOIZE then BINFLOAT follow the key, each possibly after a FRAME header
    pos = starts + 2 + lengths
    pos = np.where(b.take(pos, mode="clip") == _FRAME, pos + 9, pos)
    keep = b.take(pos, mode="clip") == _MEMOIZE
    pos = pos + 1
    pos = np.where(b.take(pos, mode="clip") == _FRAME, pos + 9, pos)
    keep &= (b.take(pos, mode="clip") == _BINFLOAT) & (pos + 9 <= b.size)
    starts, lengths, pos = starts[keep], lengths[keep], pos[keep]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    valid = np.zeros(starts.size, dtype=bool)
    for length in np.unique(lengths).tolist():
        sel = np.flatnonzero(lengths == length).astype(np.int32)
        # one column at a time keeps index temporaries at one int64 per entry
        codes = np.zeros(sel.size, dtype=np.int64)
        ok = np.ones(sel.size, dtype=bool)
        first = starts[sel] + 2
        for j in range(length):
            digit = b[first + j] - np.uint8(_DIGIT0)  # uint8: bytes below '0' wrap and fail too
            ok &= digit < nsymbols
            codes *= nsymbols
            codes += digit
        sel, codes = sel[ok], codes[ok]
        if sel.size == 0:
            continue
        valid[sel] = True
        # BINFLOAT is big-endian: fill the bytes reversed to get native little-endian doubles
        raw_vals = np.empty((sel.size, 8), dtype=np.uint8)
        first = pos[sel] + 1
        for j in range(8):
            raw_vals[:, 7 - j] = b[first + j]
        out[length] = (codes, raw_vals.view("<f8").ravel())
    starts, lengths, pos = starts[valid], lengths[valid], pos[valid]
    if starts.size == 0:
        return None
    # every byte between entries must be structure: nothing, SETITEMS/MARK
    # ('u', '(') and/or one 9-byte FRAME header; only a handful of larger
    # gaps (dict headers between shapes) may exist
    gaps = starts[1:] - (pos[:-1] + 9)
    if (gaps < 0).any():
        return None
    plain = (gaps <= 2) | ((gaps >= 9) & (gaps <= 11))
    irregular = int(gaps.size - np.count_nonzero(plain))
    if irregular > len(out) + 1 or (gaps > 64).any() or starts[0] > 256 or b.size - (pos[-1] + 9) > 8:
        return None
    return out


class _TableUnpickler(pickle.Unpickler):
    """Unpickler that can build only plain dicts, OrderedDicts and defaultdicts."""

    _ALLOWED = {("builtins", "dict"): dict, ("collections", "OrderedDict"): OrderedDict,
                ("collections", "defaultdict"): defaultdict}

    def find_class(self, module: str, name: str) -> type:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"CTM table may not reference {module}.{name}") from None


def unpickle_restricted(raw: bytes) -> dict:
    """Unpickle a CTM table with :class:`_TableUnpickler` (reference path; slow for big tables)."""
    return _TableUnpickler(io.BytesIO(raw)).load()


def _from_mapping(obj: dict, nsymbols: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for shape, entries in obj.items():
        length = int(np.prod(shape))
        keys = np.array(list(entries.keys()), dtype=f"S{length}")
        digits = keys.view(np.uint8).reshape(-1, length).astype(np.int64) - _DIGIT0
        powers = nsymbols ** np.arange(length - 1, -1, -1, dtype=np.int64)
        out[length] = (digits @ powers, np.fromiter(entries.values(), dtype=np.float64, count=len(entries)))
    return out


def _make_table(shape: tuple[int, ...], nsymbols: int, codes: np.ndarray, values: np.ndarray) -> ShapeTable:
    order = np.argsort(codes, kind="stable")
    codes, values = codes[order], values[order]
    missing = float(values.max()) + 1.0
    dense = None
    if nsymbols == 2:
        cells = int(np.prod(shape))
        dense = np.full(1 << cells, missing)
        # a binary relabelled key starts with 0; the raw block starting with 1 is its complement
        dense[codes] = values
        dense[((1 << cells) - 1) ^ codes] = values
    return ShapeTable(shape, nsymbols, codes, values, missing, dense)
