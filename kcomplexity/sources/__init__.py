"""Turn anything that holds weights into named arrays, one tensor at a time.

Accepted sources: numpy arrays, torch tensors (any device; float32/16,
bfloat16, ints, bool), ``nn.Module`` (trainable parameters; buffers on
request), state_dicts (nested mappings), and files, each read by the module
of its format through :data:`READERS` (by suffix): ``.safetensors`` (one
tensor at a time through a memory map; sharded checkpoints through their
index), ``.pt``/``.pth``/``.bin``/``.ckpt`` (``torch.load(weights_only=True)``
only), ``.npz`` and ``.npy``; a model folder; a model name in the local
Hugging Face cache. The awkward-value policy is in :mod:`.arrays`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, EmptyTensorError, SourceNotFoundError, UnsupportedSourceError
from .arrays import (MAX_DIMS, SUPPORTED_DTYPES, NamedArray, Source, _from_items, _torch_or_none, array_and_dtype,
                     as_named, concat, is_module, make_named)
from .hub import _hf_cache_snapshot
from .numpy_files import MAX_NPZ_EXPANSION, _open_numpy
from .safetensors_files import SHARD_INDEX, _open_safetensors, _open_sharded, read_safetensors_tensor
from .torch_files import CHECKPOINT_KEYS, SUFFIXES as TORCH_SUFFIXES, open_torch, weights_of_checkpoint

#: the reader of each weights-file suffix: one module per format
READERS: dict[str, Callable[[Path, bool], Source]] = {
    ".safetensors": _open_safetensors, **{suffix: open_torch for suffix in TORCH_SUFFIXES},
    ".npz": _open_numpy, ".npy": _open_numpy}


def open_source(source: Any, include_buffers: bool = False, allow_nonfinite: bool = False) -> Source:
    """Open anything holding weights as a :class:`Source` (lazy; files are read tensor by tensor)."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not text or "\0" in str(text):
            raise UnsupportedSourceError(f"{text!r} is not a usable path (empty, or holds a NUL byte)")
        path = Path(source)
        if not path.exists() and not path.is_symlink():
            cached = _hf_cache_snapshot(text)
            if cached is not None:
                return _open_path(cached, allow_nonfinite)
        return _open_path(path, allow_nonfinite)
    torch = _torch_or_none()
    if torch is not None and isinstance(source, torch.nn.Module):
        items = [(n, p) for n, p in source.named_parameters() if p.requires_grad]
        if include_buffers:
            items += list(source.named_buffers())
        if not items:
            raise EmptyTensorError(f"{type(source).__name__} has no trainable parameters")
        return _from_items(items, allow_nonfinite, type(source).__name__)
    if (torch is not None and isinstance(source, torch.Tensor)) or isinstance(source, np.ndarray):
        return _from_items([("tensor", source)], allow_nonfinite, "tensor")
    if isinstance(source, Mapping):
        items, left_out = weights_of_checkpoint(source)
        return _from_items(items, allow_nonfinite, "state_dict", left_out)
    if isinstance(source, (list, tuple)) and source and all(isinstance(a, NamedArray) for a in source):
        return _from_items([(a.name, a) for a in source], allow_nonfinite, "arrays")
    raise UnsupportedSourceError(
        f"cannot read weights from a {type(source).__name__}; pass an array, tensor, nn.Module, "
        "state_dict or a path to .safetensors/.pt/.pth/.npz/.npy"
    )


def _open_path(path: Path, allow_nonfinite: bool) -> Source:
    if not path.exists():
        if path.is_symlink():
            raise CorruptFileError(f"{path} is a broken symbolic link (or a loop of links)")
        raise SourceNotFoundError(f"no such file: {path}")
    if not os.access(path, os.R_OK) and not path.is_dir():
        raise CorruptFileError(f"{path} cannot be read: permission denied")
    if path.is_dir():
        return _open_directory(path, allow_nonfinite)
    if not path.is_file():  # a FIFO, socket or device would block or never end
        raise UnsupportedSourceError(f"{path} is not a regular file")
    if path.name.endswith(".safetensors.index.json"):
        return _open_sharded(path, allow_nonfinite)
    opener = READERS.get(path.suffix.lower())
    if opener is None:
        raise UnsupportedSourceError(f"unknown weights file type '{path.suffix.lower() or path.name}'; use "
                                     f"{', '.join(READERS)} or a sharded index (*{SHARD_INDEX.removeprefix('model')})")
    return opener(path, allow_nonfinite)


#: single-file weights a model folder may hold, in order of preference
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")


def _open_directory(path: Path, allow_nonfinite: bool) -> Source:
    """A model folder: a sharded checkpoint (its index), or its one weights file."""
    if (path / SHARD_INDEX).is_file():
        return _open_sharded(path / SHARD_INDEX, allow_nonfinite)
    for name in _FOLDER_FILES:
        if (path / name).is_file():
            return _open_path(path / name, allow_nonfinite)
    raise UnsupportedSourceError(f"{path} is a directory without {SHARD_INDEX} or {' / '.join(_FOLDER_FILES)}; "
                                 "pass a weights file")


def input_paths(source: Any) -> list[Path]:
    """Every file and folder reading ``source`` may touch (for refusing outputs that land on an input).

    A model folder, a sharded index's folder and a Hugging Face cache entry
    (snapshots and blobs) count whole; a single file counts itself.
    """
    if not isinstance(source, (str, os.PathLike)):
        return []
    text = os.fspath(source)
    if not text or "\0" in text:
        return []
    path = Path(text)
    if not os.path.lexists(path):
        cached = _hf_cache_snapshot(text)
        # snapshots/<rev> -> the repo's cache folder, which holds the blobs the snapshot links to
        return [cached.parent.parent] if cached is not None else []
    if path.name.endswith(".safetensors.index.json"):
        return [path, path.parent]
    return [path]


def refuse_output_onto(output: str | os.PathLike | None, *inputs: Any) -> None:
    """OutputIsInputError when ``output`` resolves to a file any of ``inputs`` reads, or lies inside a folder
    they read (:func:`input_paths`); inputs that are not paths (arrays, modules) or None read no file."""
    from ..fileio import refuse_output_into

    refuse_output_into(output, [p for i in inputs if isinstance(i, (str, os.PathLike))
                                for p in (input_paths(i) or [i])])


__all__ = ["NamedArray", "Source", "open_source", "make_named", "as_named", "concat", "array_and_dtype", "is_module",
           "input_paths", "refuse_output_onto", "read_safetensors_tensor", "weights_of_checkpoint", "READERS", "CHECKPOINT_KEYS",
           "SHARD_INDEX", "MAX_DIMS", "MAX_NPZ_EXPANSION", "SUPPORTED_DTYPES"]
