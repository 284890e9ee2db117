"""PyTorch checkpoints (``.pt``, ``.pth``, ``.bin``, ``.ckpt``): ``torch.load(weights_only=True)`` only, and the
weights found inside a training checkpoint's nesting."""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, UnsafeCheckpointError, UnsupportedSourceError
from .arrays import Source, _from_items, _one_line, _torch_or_none

#: keys under which training checkpoints nest the weights, in order of preference
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module",
                   "ema", "ema_state_dict", "model_ema", "params")
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


#: the deepest nesting of mappings a checkpoint may have (real ones nest a few levels)
MAX_NESTING = 64


def weights_of_checkpoint(state: Mapping) -> tuple[list[tuple[str, Any]], list[str]]:
    """The weights of a state dict or training checkpoint, and the top-level keys left out.

    A checkpoint that nests the weights under a common key (``state_dict``,
    ``model_state_dict``, ``model_state``, ``model``, ``net``, ``module``,
    ``ema``, ... first found in :data:`CHECKPOINT_KEYS` order) beside other
    entries yields only those weights; the other keys (optimizer state,
    step counters, a second copy such as ``ema``) are named as left out.
    A plain state dict yields every tensor; non-tensor entries are skipped.
    """
    for key in CHECKPOINT_KEYS:
        if isinstance(state.get(key), Mapping) and _flatten(state[key], ""):
            return _flatten(state[key], ""), [str(k) for k in state if k != key]
    return _flatten(state, ""), []


def _flatten(state: Mapping, prefix: str, depth: int = 0) -> list[tuple[str, Any]]:
    """Tensors of a nested mapping under dotted names; a name reached twice (``{"a": {"b": w}, "a.b": z}``)
    is an error rather than a silently dropped tensor."""
    if depth > MAX_NESTING:
        raise CorruptFileError(f"a checkpoint nested more than {MAX_NESTING} mappings deep")
    torch = _torch_or_none()
    out: list[tuple[str, Any]] = []
    for key, value in state.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out += _flatten(value, name, depth + 1)
        elif isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor)):
            out.append((name, value))
    if depth == 0:
        seen: set[str] = set()
        for name, _ in out:
            if name in seen:
                raise UnsupportedSourceError(f"two tensors flatten to the name '{name}' (a nested key and a dotted "
                                             "key); rename one")
            seen.add(name)
    return out


def _load_torch(path: Path) -> Any:
    torch = _torch_or_none()
    if torch is None:
        raise UnsupportedSourceError(f"{path}: reading torch checkpoints needs torch installed (pip install torch); "
                                     "safetensors, .npz and .npy files do not")

    try:
        is_zip, bad = zipfile.is_zipfile(path), None
        if is_zip:  # torch does not check the CRC of its zip entries: damaged data would be scored silently
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
    except Exception as exc:  # zipfile raises many types on damaged archives (BadZipFile, UnicodeDecodeError, ...)
        raise CorruptFileError(f"{path}: not a readable torch checkpoint ({_one_line(exc)})") from None
    if bad is not None:
        raise CorruptFileError(f"{path}: entry {bad} fails its CRC check (the file is damaged)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        # torch reports every failure as "Weights only load failed"; a refused
        # object shows as an unsupported global, anything else is corruption
        msg = str(exc)
        if "unsupported global" in msg.lower():
            raise UnsafeCheckpointError(
                f"{path}: refused by torch.load(weights_only=True): it pickles objects other than tensors "
                "and plain containers; re-save it as a state_dict or safetensors"
            ) from None
        raise CorruptFileError(f"{path}: not a readable torch checkpoint (unpickling failed)") from None
    except Exception as exc:  # a damaged pickle stream surfaces as any error type (IndexError, KeyError, ...)
        raise CorruptFileError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                               f"{_one_line(exc)})") from None
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj}
    if not isinstance(obj, Mapping):
        raise UnsupportedSourceError(f"{path} holds a {type(obj).__name__}, not a tensor or state_dict")
    return obj


def open_torch(path: Path, allow_nonfinite: bool) -> Source:
    items, left_out = weights_of_checkpoint(_load_torch(path))
    return _from_items(items, allow_nonfinite, str(path), left_out)
