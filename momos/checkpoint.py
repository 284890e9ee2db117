"""Crash-safe checkpoints of a run: weights in safetensors, optimiser/scheduler/RNG state beside them.

Each epoch goes into its own folder, then ``latest.json`` is atomically
replaced to point at it, so a kill at any moment leaves the previous
complete checkpoint in force. The state file is read back with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import RunError
from .rundir import write_atomic

LATEST = "latest.json"
PREVIOUS = "previous.safetensors"


def save(root: Path, epoch: int, model: torch.nn.Module, state: dict[str, Any], mosaic: Any = None,
         previous: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint ``epoch`` under ``root`` and make it the latest; older ones are removed.

    ``previous`` (the weights logged at the epoch before, which ``delta`` is
    conditioned on) is kept beside it so a resumed run logs the same numbers.
    """
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"epoch-{epoch:05d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    save_file(_weights(model), str(folder / "model.safetensors"))
    torch.save(state, folder / "state.pt")
    if mosaic is not None:
        mosaic.save(folder / "mosaic.safetensors")
    if previous is not None:
        save_file({k: v.contiguous() for k, v in previous.items()}, str(folder / PREVIOUS))
    _fsync_dir(folder)
    write_atomic(root / LATEST, json.dumps({"epoch": epoch, "folder": folder.name}))
    for old in root.glob("epoch-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load(root: Path, model: torch.nn.Module) -> tuple[int, dict[str, Any], Path]:
    """Load the latest checkpoint into ``model``; returns (epoch, state, its folder)."""
    try:
        pointer = json.loads((root / LATEST).read_text())
        folder = root / pointer["folder"]
        if not (isinstance(pointer["folder"], str) and folder.parent == root and folder.name.startswith("epoch-")
                and folder.resolve().parent == root.resolve()):
            raise RunError(f"checkpoint pointer {root / LATEST} points outside {root}: {pointer['folder']!r}")
        weights = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(weights, strict=True)
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except RunError:
        raise
    except FileNotFoundError as exc:
        raise RunError(f"no checkpoint to resume in {root} ({exc.filename})") from None
    except Exception as exc:  # json, safetensors, torch and key errors all mean the checkpoint is unusable
        raise RunError(f"corrupt checkpoint in {root}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if state.get("epoch") != pointer["epoch"]:
        raise RunError(f"corrupt checkpoint in {root}: state is for epoch {state.get('epoch')}, "
                       f"pointer says {pointer['epoch']}")
    return int(pointer["epoch"]), state, folder


def load_previous(folder: Path) -> dict[str, torch.Tensor] | None:
    """The previous epoch's logged weights saved with a checkpoint, or None."""
    path = folder / PREVIOUS
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunError(f"corrupt checkpoint file {path}: {exc}") from None


def save_best(root: Path, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """Keep the best model so far (weights + what made it best), replacing the previous one atomically."""
    tmp = root / "best.safetensors.tmp"
    save_file(_weights(model), str(tmp))
    os.replace(tmp, root / "best.safetensors")
    write_atomic(root / "best.json", json.dumps(info))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
