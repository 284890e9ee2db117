"""Models in the local Hugging Face cache, found by name (``org/model``) and never downloaded."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CorruptFileError
from ..fileio import read_bytes


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
