"""Named arrays, the unit every estimator and code reads, and a lazily read collection of them (:class:`Source`).

Policy for awkward values (documented in the README):

* an empty tensor raises :class:`EmptyTensorError` (an empty tensor has no
  codelength to estimate, and silently scoring it as 0 bits hides bugs);
* NaN/Inf raise :class:`NonFiniteError` unless ``allow_nonfinite=True``, in
  which case their raw bytes are scored like any others.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EmptyTensorError, NonFiniteError, NonNumericError, UnsupportedSourceError


@dataclass(frozen=True)
class NamedArray:
    """One tensor: its name, its data in its own dtype's bytes, and that dtype.

    ``data`` is a C-contiguous numpy array. bfloat16 has no numpy dtype, so
    it is held as its uint16 bit patterns with ``dtype == "bfloat16"``.
    """

    name: str
    data: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def numel(self) -> int:
        return int(self.data.size)

    @property
    def itemsize(self) -> int:
        return int(self.data.dtype.itemsize)

    @property
    def raw_bits(self) -> int:
        """Bits of the tensor as stored: numel x dtype width."""
        return self.numel * self.itemsize * 8

    def values(self) -> np.ndarray:
        """The numeric values (float32 for bfloat16; bool as uint8), same shape."""
        if self.dtype == "bfloat16":
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        if self.data.dtype == np.bool_:
            return self.data.view(np.uint8)
        return self.data

    def raw(self) -> memoryview:
        """The tensor's bytes in its own dtype, without a copy."""
        return memoryview(self.data.reshape(-1).view(np.uint8))

    def bit_patterns(self) -> np.ndarray:
        """Each element's bytes as one unsigned integer (1-D): distinct patterns = distinct values."""
        return self.data.reshape(-1).view(f"u{self.itemsize}")


#: the most dimensions a tensor may have (numpy's own limit)
MAX_DIMS = 64


def make_named(name: str, array: Any, allow_nonfinite: bool = False, allow_empty: bool = False) -> NamedArray:
    """Convert one numpy array or torch tensor into a validated :class:`NamedArray` (``allow_empty``: for
    writers that keep every tensor, such as ``pack``, where an empty one is still part of the checkpoint)."""
    ndim = len(getattr(array, "shape", ()))
    if ndim > MAX_DIMS:  # numpy stops at 64; no weight tensor comes near
        raise UnsupportedSourceError(f"tensor '{name}' has {ndim} dimensions; at most {MAX_DIMS} are supported")
    data, dtype = _to_numpy(name, array)
    if data.size == 0 and not allow_empty:
        raise EmptyTensorError(f"tensor '{name}' is empty (shape {tuple(data.shape)}); empty tensors have no codelength")
    named = NamedArray(name, data, dtype)
    if not allow_nonfinite and (dtype == "bfloat16" or data.dtype.kind == "f"):
        finite = np.isfinite(named.values())
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise NonFiniteError(
                f"tensor '{name}' has {bad} NaN/Inf value(s); pass allow_nonfinite=True "
                "(CLI: --allow-nonfinite) to score its raw bytes anyway"
            )
    return named


def _to_numpy(name: str, array: Any) -> tuple[np.ndarray, str]:
    if isinstance(array, NamedArray):
        return array.data, array.dtype
    torch = _torch_or_none()
    if torch is not None and isinstance(array, torch.Tensor):
        if array.is_nested:
            raise UnsupportedSourceError(f"tensor '{name}' is a nested tensor; score its components one by one")
        if array.layout != torch.strided:
            raise NonNumericError(f"tensor '{name}' is sparse ({array.layout}); convert it with .to_dense() first")
        if array.device.type == "meta":
            raise UnsupportedSourceError(f"tensor '{name}' is on the meta device and holds no values")
        t = array.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
        if t.is_complex() or t.dtype not in _torch_numpy_dtypes(torch):
            raise NonNumericError(f"tensor '{name}' has dtype {t.dtype}; {SUPPORTED_DTYPES}")
        arr = t.numpy()
    elif isinstance(array, np.ndarray) or np.isscalar(array):
        arr = np.asarray(array)
    else:
        raise UnsupportedSourceError(f"'{name}' is a {type(array).__name__}, not a tensor or array")
    if arr.dtype.kind not in "fiub":
        raise NonNumericError(f"tensor '{name}' has dtype {arr.dtype}; {SUPPORTED_DTYPES}")
    if not arr.dtype.isnative:  # big-endian files: every estimator sees native values
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr).reshape(arr.shape)  # a 0-d tensor stays 0-d (ascontiguousarray makes it 1-d)
    return arr, str(arr.dtype)


SUPPORTED_DTYPES = "supported dtypes: float64/32/16, bfloat16, signed/unsigned integers, bool"


def _torch_numpy_dtypes(torch: Any) -> set:
    return {
        torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
        torch.int8, torch.uint8, torch.bool,
    }


def _torch_or_none() -> Any:
    try:
        import torch
    except ImportError:  # torch is optional at import time
        return None
    return torch


class Source:
    """A lazily read collection of named tensors; iterate to get :class:`NamedArray`."""

    def __init__(self, names: list[str], opener: Any, allow_nonfinite: bool, label: str,
                 left_out: list[str] | None = None, files: list[str] | None = None) -> None:
        self.names = names
        self._opener = opener
        self.allow_nonfinite = allow_nonfinite
        self.label = label
        #: what the source held besides the weights and did not yield (optimizer state, counters, ...)
        self.left_out = list(left_out or [])
        #: per tensor, the safetensors file holding it (lets worker processes read tensors themselves)
        self.files = files
        #: yield empty tensors instead of refusing them (a writer that keeps every tensor sets it)
        self.allow_empty = False

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[NamedArray]:
        # drop each reference before fetching the next tensor, so that streaming
        # a file holds one tensor at a time
        items = self._opener()
        while (item := next(items, None)) is not None:
            named = make_named(item[0], item[1], self.allow_nonfinite, self.allow_empty)
            del item
            yield named
            del named


def _from_items(items: list[tuple[str, Any]], allow_nonfinite: bool, label: str,
                left_out: list[str] | None = None) -> Source:
    if not items:
        raise EmptyTensorError(f"{label} holds no tensors")
    return Source([n for n, _ in items], lambda: iter(items), allow_nonfinite, label, left_out)


def is_module(obj: Any) -> bool:
    """True for a torch ``nn.Module`` (without importing torch when the caller has not)."""
    torch = sys.modules.get("torch")  # an nn.Module exists only once torch is imported
    return torch is not None and isinstance(obj, torch.nn.Module)


def concat(arrays: list[NamedArray], name: str = "(all)") -> NamedArray:
    """All tensors flattened and concatenated in order, as one :class:`NamedArray`.

    Tensors of one dtype keep it (so compressors see their real bytes);
    mixed dtypes are promoted to a common float type first.
    """
    if not arrays:
        raise EmptyTensorError("nothing to concatenate")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) == 1:
        data = np.concatenate([a.data.reshape(-1) for a in arrays])
        return NamedArray(name, data, arrays[0].dtype)
    common = np.result_type(*[a.values().dtype for a in arrays], np.float32)
    data = np.concatenate([a.values().reshape(-1).astype(common, copy=False) for a in arrays])
    return NamedArray(name, data, str(data.dtype))


def array_and_dtype(x: Any, name: str = "tensor") -> tuple[np.ndarray, str]:
    """A NamedArray, numpy array or torch tensor as (numpy data, dtype name), empty arrays included."""
    return (x.data, x.dtype) if isinstance(x, NamedArray) else _to_numpy(name, x)


def as_named(x: Any, name: str = "tensor", allow_nonfinite: bool = True, allow_empty: bool = False) -> NamedArray:
    """Accept a :class:`NamedArray`, numpy array or torch tensor for a single-array API (``allow_empty`` for
    codes that can hold an empty tensor)."""
    if isinstance(x, NamedArray):
        return x
    return make_named(name, x, allow_nonfinite=allow_nonfinite, allow_empty=allow_empty)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
