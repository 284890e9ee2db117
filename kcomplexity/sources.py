"""Turn anything that holds weights into named arrays, one tensor at a time.

Accepted sources: numpy arrays, torch tensors (any device; float32/16,
bfloat16, ints, bool), ``nn.Module`` (trainable parameters; buffers on
request), state_dicts (nested mappings), and files: ``.safetensors``
(read one tensor at a time through a memory map), ``.pt``/``.pth``/``.bin``/
``.ckpt`` (``torch.load(weights_only=True)`` only), ``.npz`` and ``.npy``.

Policy for awkward values (documented in the README):

* an empty tensor raises :class:`EmptyTensorError` (an empty tensor has no
  codelength to estimate, and silently scoring it as 0 bits hides bugs);
* NaN/Inf raise :class:`NonFiniteError` unless ``allow_nonfinite=True``, in
  which case their raw bytes are scored like any others.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import read_bytes, read_text
from .errors import (
    KComplexityError,
    CorruptFileError,
    EmptyTensorError,
    NonFiniteError,
    NonNumericError,
    SourceNotFoundError,
    UnsafeCheckpointError,
    UnsupportedSourceError,
)

#: keys under which training checkpoints nest the weights, in order of preference
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module",
                   "ema", "ema_state_dict", "model_ema", "params")
#: the index file of a sharded Hugging Face checkpoint
SHARD_INDEX = "model.safetensors.index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: an .npz member may expand at most this much (beyond 256 MiB): real weights compress far less
MAX_NPZ_EXPANSION = 200


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


def make_named(name: str, array: Any, allow_nonfinite: bool = False) -> NamedArray:
    """Convert one numpy array or torch tensor into a validated :class:`NamedArray`."""
    ndim = len(getattr(array, "shape", ()))
    if ndim > MAX_DIMS:  # numpy stops at 64; no weight tensor comes near
        raise UnsupportedSourceError(f"tensor '{name}' has {ndim} dimensions; at most {MAX_DIMS} are supported")
    data, dtype = _to_numpy(name, array)
    if data.size == 0:
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
    arr = np.ascontiguousarray(arr)
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

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[NamedArray]:
        # drop each reference before fetching the next tensor, so that streaming
        # a file holds one tensor at a time
        items = self._opener()
        while (item := next(items, None)) is not None:
            named = make_named(item[0], item[1], self.allow_nonfinite)
            del item
            yield named
            del named


def is_module(obj: Any) -> bool:
    """True for a torch ``nn.Module`` (without importing torch when the caller has not)."""
    torch = sys.modules.get("torch")  # an nn.Module exists only once torch is imported
    return torch is not None and isinstance(obj, torch.nn.Module)


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


def _from_items(items: list[tuple[str, Any]], allow_nonfinite: bool, label: str,
                left_out: list[str] | None = None) -> Source:
    if not items:
        raise EmptyTensorError(f"{label} holds no tensors")
    return Source([n for n, _ in items], lambda: iter(items), allow_nonfinite, label, left_out)


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
    suffix = path.suffix.lower()
    if path.name.endswith(".safetensors.index.json"):
        return _open_sharded(path, allow_nonfinite)
    if suffix == ".safetensors":
        return _open_safetensors(path, allow_nonfinite)
    if suffix in TORCH_SUFFIXES:
        items, left_out = weights_of_checkpoint(_load_torch(path))
        return _from_items(items, allow_nonfinite, str(path), left_out)
    if suffix in (".npz", ".npy"):
        return _open_numpy(path, allow_nonfinite)
    raise UnsupportedSourceError(
        f"unknown weights file type '{suffix or path.name}'; use .safetensors, .pt, .pth, .bin, .ckpt, .npz or .npy"
    )


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


def _open_sharded(index: Path, allow_nonfinite: bool) -> Source:
    """Every shard of a sharded safetensors checkpoint as one source, read shard by shard, tensor by tensor."""
    try:
        weight_map = json.loads(read_text(index, what="safetensors index"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map is not a mapping of tensor names to shard files")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptFileError(f"{index}: not a safetensors index ({_one_line(exc)})") from None
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, []).append(str(name))
    for shard in shards:
        if Path(shard).name != shard or shard in (".", ".."):  # shards sit beside the index, nowhere else
            raise CorruptFileError(f"{index}: shard {shard!r} is not a file name beside the index")
        if not (index.parent / shard).is_file():
            raise SourceNotFoundError(f"{index}: shard {shard} is missing")
    if not weight_map:
        raise EmptyTensorError(f"{index} lists no tensors")
    names = [n for tensors in shards.values() for n in tensors]
    files = [str(index.parent / shard) for shard, tensors in shards.items() for _ in tensors]

    def opener() -> Iterator[tuple[str, Any]]:
        for shard, tensors in shards.items():
            source = _open_safetensors(index.parent / shard, True)
            missing = set(tensors) - set(source.names)
            if missing:
                raise CorruptFileError(f"{index}: shard {shard} lacks {len(missing)} tensor(s) the index lists, "
                                       f"e.g. '{sorted(missing)[0]}'")
            yield from source._opener(tensors)

    return Source(names, opener, allow_nonfinite, str(index), files=files)


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


def _hf_cache_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's snapshot of model ``name`` (``org/model``), or None; never downloads."""
    if name.count("/") > 1 or name.startswith((".", "/")) or not name.strip():
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    # read the environment now (huggingface_hub reads it once, at its import)
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                               else None)
    from huggingface_hub.constants import HF_HUB_CACHE

    repo = Path(cache or HF_HUB_CACHE) / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / "main"
    if os.path.lexists(ref):
        try:  # a FIFO here would hang the hub's reader; an oversized ref is not a revision
            read_bytes(ref, limit=4096, what="Hugging Face cache ref")
        except OSError as exc:
            raise CorruptFileError(f"cached model {name}: {exc}") from None
    try:
        snapshot = Path(snapshot_download(name, local_files_only=True, cache_dir=cache))
    except Exception:  # not cached, an invalid repo id, or an offline-mode error: not a cached model
        return None
    if not _inside(snapshot, repo / "snapshots"):
        raise CorruptFileError(f"cached model {name}: its snapshot {snapshot} lies outside the cache entry {repo}")
    return snapshot


def _inside(path: Path, root: Path) -> bool:
    """Does ``path`` resolve to ``root`` or below it (links followed on both sides)?"""
    path, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return path == root or root in path.parents


def _safetensors_handle(path: Path) -> tuple[Any, str]:
    """An open safetensors file and the framework reading it: torch reads every dtype (bfloat16 too);
    without torch (a scoring-only install) numpy reads the rest."""
    from safetensors import safe_open

    framework = "pt" if _torch_or_none() is not None else "numpy"
    try:
        return safe_open(str(path), framework=framework), framework
    except Exception as exc:  # safetensors raises its own error types; all mean "cannot parse"
        raise CorruptFileError(f"{path}: not a valid safetensors file ({_one_line(exc)})") from None


def _safetensors_tensor(f: Any, framework: str, path: Path, name: str) -> Any:
    try:
        return f.get_tensor(name)
    except Exception as exc:
        if framework == "numpy" and "bf16" in str(exc).lower():
            raise UnsupportedSourceError(f"{path}: tensor '{name}' is bfloat16, which needs torch "
                                         "installed to read (pip install torch)") from None
        raise CorruptFileError(f"{path}: cannot read tensor '{name}' ({_one_line(exc)})") from None


def read_safetensors_tensor(path: str, name: str, allow_nonfinite: bool) -> NamedArray:
    """One tensor of a safetensors file, validated (what a worker process reads for ``score(jobs=N)``)."""
    f, framework = _safetensors_handle(Path(path))
    with f:
        return make_named(name, _safetensors_tensor(f, framework, Path(path), name), allow_nonfinite)


def _open_safetensors(path: Path, allow_nonfinite: bool) -> Source:
    f, _ = _safetensors_handle(path)
    with f:
        names = list(f.keys())
    if not names:
        raise EmptyTensorError(f"{path} holds no tensors")

    def opener(only: list[str] | None = None) -> Iterator[tuple[str, Any]]:
        # the file is opened for each tensor: the pages of a memory-mapped shard read so far are released,
        # so a large shard never stays resident as a whole
        for name in names if only is None else only:
            f, framework = _safetensors_handle(path)
            with f:
                tensor = _safetensors_tensor(f, framework, path, name)
            yield name, tensor
            del tensor

    return Source(names, opener, allow_nonfinite, str(path), files=[str(path)] * len(names))


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


def _npy_claim(fh: Any, where: str) -> tuple[int, int]:
    """(bytes the .npy header claims for its data, header length); CorruptFileError for a damaged header."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, dtype = reader(fh, max_header_size=1 << 16)
    except Exception as exc:  # numpy raises ValueError, SyntaxError or tokenize errors for a bad header
        raise CorruptFileError(f"{where}: damaged .npy header ({_one_line(exc)})") from None
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"{where}: holds pickled objects, which are not loaded")
    if any(int(d) < 0 for d in shape):
        raise CorruptFileError(f"{where}: damaged .npy header (negative dimension in shape {tuple(shape)})")
    return int(np.prod(shape, dtype=object)) * dtype.itemsize, fh.tell()


def _check_claimed_sizes(path: Path) -> None:
    """Refuse files whose headers claim more data than they hold, before anything is allocated."""
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as fh:
            claim, header = _npy_claim(fh, str(path))
        if claim > path.stat().st_size - header:
            raise CorruptFileError(f"{path}: header claims {claim:,} bytes of data, the file holds "
                                   f"{path.stat().st_size - header:,}")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            # the whole archive too: many members each under the per-member bound still expand without bound
            total = sum(info.file_size for info in archive.infolist())
            packed = sum(max(info.compress_size, 1) for info in archive.infolist())
            if total > MAX_NPZ_EXPANSION * packed and total > 1 << 28:
                raise CorruptFileError(f"{path}: its members would expand {packed:,} bytes to {total:,} (over "
                                       f"{MAX_NPZ_EXPANSION}x and 256 MiB); refusing a likely zip bomb")
            for info in archive.infolist():
                # every member, whatever its name: numpy loads a member without the .npy suffix all the same
                if info.file_size > MAX_NPZ_EXPANSION * max(info.compress_size, 1) and info.file_size > 1 << 28:
                    raise CorruptFileError(
                        f"{path}: member {info.filename} would expand {info.compress_size:,} bytes to "
                        f"{info.file_size:,} (over {MAX_NPZ_EXPANSION}x and 256 MiB); refusing a likely zip bomb")
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    claim, header = _npy_claim(fh, f"{path}: {info.filename}")
                if claim != info.file_size - header:
                    raise CorruptFileError(f"{path}: member {info.filename} claims {claim:,} bytes of data but its "
                                           f"archive entry holds {info.file_size - header:,}")
    except KComplexityError:
        raise
    except Exception as exc:  # unsupported compression, encrypted members, damaged archives (any error type)
        raise CorruptFileError(f"{path}: not a readable .npz archive ({_one_line(exc)})") from None


def _open_numpy(path: Path, allow_nonfinite: bool) -> Source:
    _check_claimed_sizes(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UnsafeCheckpointError(f"{path}: holds pickled objects, which are not loaded ({_one_line(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptFileError(f"{path}: not a readable numpy file ({_one_line(exc)})") from None
    if isinstance(loaded, np.ndarray):
        return _from_items([(path.stem, loaded)], allow_nonfinite, str(path))
    names = list(loaded.files)
    if not names:
        raise EmptyTensorError(f"{path} holds no arrays")

    def opener() -> Iterator[tuple[str, Any]]:
        with np.load(path, allow_pickle=False) as archive:
            for name in names:
                try:
                    yield name, archive[name]
                except ValueError as exc:  # object arrays need pickle
                    raise NonNumericError(f"{path}: array '{name}' is not numeric ({_one_line(exc)})") from None
                except (OSError, EOFError, zipfile.BadZipFile) as exc:
                    raise CorruptFileError(f"{path}: cannot read array '{name}' ({_one_line(exc)})") from None

    return Source(names, opener, allow_nonfinite, str(path))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def as_named(x: Any, name: str = "tensor", allow_nonfinite: bool = True) -> NamedArray:
    """Accept a :class:`NamedArray`, numpy array or torch tensor for a single-array API."""
    if isinstance(x, NamedArray):
        return x
    return make_named(name, x, allow_nonfinite=allow_nonfinite)
