"""Crash-safe checkpoints of a run: weights in safetensors, optimiser/scheduler/RNG state beside them.

Each epoch goes into its own folder, then ``latest.json`` is atomically
replaced to point at it, so a kill at any moment leaves the previous
complete checkpoint in force. The state file is read back with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from kcomplexity.fileio import read_bytes

from . import rundir
from .errors import RunError
from .rundir import CHECKPOINT_FOLDER, write_atomic

LATEST = rundir.LATEST
PREVIOUS = "previous.safetensors"
#: the largest checkpoint file read back (weights, optimiser state): a bound checked before reading
FILE_LIMIT = 64 * 2 ** 30


def save(root: Path, epoch: int, model: torch.nn.Module, state: dict[str, Any], mosaic: Any = None,
         previous: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint ``epoch`` under ``root`` and make it the latest; older ones of ours are removed.

    ``previous`` (the weights logged at the epoch before, which ``delta`` is
    conditioned on) is kept beside it so a resumed run logs the same numbers.
    Only ``epoch-NNNNN`` folders (exact name) and their files of ours are ever
    removed; a user's folder such as ``epoch-00015-my-backup`` stays.
    """
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"epoch-{epoch:05d}"
    if folder.exists() or folder.is_symlink():
        rundir.remove_checkpoint_folder(folder)
    folder.mkdir(exist_ok=True)
    write_atomic(folder / "model.safetensors", _save_weights(_weights(model)))
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(folder / "state.pt", buf.getvalue())
    if mosaic is not None:
        mosaic.save(folder / "mosaic.safetensors")
    if previous is not None:
        write_atomic(folder / PREVIOUS, _save_weights({k: v.contiguous() for k, v in previous.items()}))
    _fsync_dir(folder)
    write_atomic(root / LATEST, json.dumps({"epoch": epoch, "folder": folder.name}))
    for old in root.iterdir():
        if old != folder and CHECKPOINT_FOLDER.fullmatch(old.name):
            rundir.remove_checkpoint_folder(old)
    return folder


def _save_weights(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save(tensors)


def load(root: Path, model: torch.nn.Module) -> tuple[int, dict[str, Any], Path]:
    """Load the latest checkpoint into ``model``; returns (epoch, state, its folder). RunError says what is wrong."""
    try:
        pointer = rundir.read_pointer(root)
        if pointer is None:
            raise RunError(f"no checkpoint to resume in {root} ({root / LATEST} is missing)")
        folder = root / pointer["folder"]
        if not (CHECKPOINT_FOLDER.fullmatch(pointer["folder"]) and folder.resolve().parent == root.resolve()):
            raise RunError(f"checkpoint pointer {root / LATEST} points outside {root}: {pointer['folder']!r}")
        weights = st_load(read_bytes(folder / "model.safetensors", FILE_LIMIT, "checkpoint file"))
        model.load_state_dict(weights, strict=True)
        state = torch.load(io.BytesIO(read_bytes(folder / "state.pt", FILE_LIMIT, "checkpoint file")),
                           map_location="cpu", weights_only=True)
    except RunError:
        raise
    except FileNotFoundError as exc:
        raise RunError(f"no checkpoint to resume in {root} ({exc.filename})") from None
    except RecursionError:
        raise RunError(f"corrupt checkpoint in {root}: nested too deeply") from None
    except Exception as exc:  # json, safetensors, torch and key errors all mean the checkpoint is unusable
        raise RunError(f"corrupt checkpoint in {root}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(state, dict) or state.get("epoch") != pointer["epoch"]:
        got = state.get("epoch") if isinstance(state, dict) else f"a {type(state).__name__}"
        raise RunError(f"corrupt checkpoint in {root}: state is for epoch {got}, pointer says {pointer['epoch']}")
    return int(pointer["epoch"]), state, folder


def load_previous(folder: Path) -> dict[str, torch.Tensor] | None:
    """The previous epoch's logged weights saved with a checkpoint, or None."""
    path = folder / PREVIOUS
    if not os.path.lexists(path):
        return None
    try:
        return st_load(read_bytes(path, FILE_LIMIT, "checkpoint file"))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunError(f"corrupt checkpoint file {path}: {exc}") from None


def save_best(root: Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """Keep the best model so far (weights + what made it best), replacing the previous one atomically."""
    write_atomic(root / "best.safetensors", _save_weights(_weights(model)))
    write_atomic(root / "best.json", json.dumps(info))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
