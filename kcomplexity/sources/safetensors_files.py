"""safetensors files, read one tensor at a time through a memory map, and sharded checkpoints (an index and its
shards)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import CorruptFileError, EmptyTensorError, SourceNotFoundError, UnsupportedSourceError
from ..fileio import read_text
from .arrays import NamedArray, Source, _one_line, _torch_or_none, make_named

#: the index file of a sharded Hugging Face checkpoint
SHARD_INDEX = "model.safetensors.index.json"


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


def read_safetensors_tensor(path: str, name: str, allow_nonfinite: bool, allow_empty: bool = False) -> NamedArray:
    """One tensor of a safetensors file, validated (what a worker process reads for ``score(jobs=N)``)."""
    f, framework = _safetensors_handle(Path(path))
    with f:
        return make_named(name, _safetensors_tensor(f, framework, Path(path), name), allow_nonfinite, allow_empty)


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
