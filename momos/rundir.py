"""The run directory: the one place that reads and writes a run's files (no torch needed).

A run directory holds ``config.json`` (the config and package versions),
``log.jsonl`` (one record per epoch), ``result.json``, ``best.safetensors`` /
``best.json`` and ``checkpoints/``; the checkpoint module writes the last two.

Safety rules (README, "Run directories"):

* only a directory holding our ``config.json`` is a run, and only a run may
  be replaced, with ``overwrite``; even then only the files a run writes are
  removed, anything else in the folder stays;
* a training process holds an exclusive lock (``fcntl.flock`` on
  ``.momos.lock``) for its whole life; the OS releases it when the process
  dies, so a killed run can be resumed at once;
* a run killed before its first checkpoint can simply be started again.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import RunError

CONFIG, LOG, RESULT, LOCK = "config.json", "log.jsonl", "result.json", ".momos.lock"
#: what a run writes; overwriting a run removes these and nothing else
OWNED = (CONFIG, LOG, RESULT, "best.safetensors", "best.json", "checkpoints", "two_part.json")
BAD_LOG_PREFIX = LOG + ".bad-"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stored_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was started with; RunError if ``run_dir`` is not a run."""
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise RunError(f"{run_dir} is a file, not a run directory")
    try:
        data = json.loads((Path(run_dir) / CONFIG).read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run directory (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{run_dir}/config.json is unreadable ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise RunError(f"{run_dir}/config.json is not a momos run config")
    return data["config"]


def is_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a config.json written by ``momos train``."""
    try:
        stored_config(run_dir)
        return True
    except RunError:
        return False


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "latest.json").is_file()


def check_out(run_dir: Path, resume: bool) -> None:
    """Refuse, before anything is written, an ``--out`` that we may not use."""
    run_dir = Path(run_dir)
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise RunError(f"{run_dir} cannot be a run directory: {parent} is a file")
    if resume:
        if not is_run(run_dir):
            raise RunError(f"nothing to resume: {run_dir} holds no config.json of a run")
        return
    if run_dir.is_dir() and not is_run(run_dir) and any(p.name != LOCK for p in run_dir.iterdir()):
        raise RunError(f"{run_dir} is not a run directory (it has files but no config.json of ours); "
                       "choose another --out: nothing there was changed")


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's exclusive lock; RunError naming the holder's pid if another process has it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunError(f"{run_dir} is in use by another training process (pid {holder}); "
                           "wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def prepare(run_dir: Path, config: dict[str, Any], versions: dict[str, str], resume: bool, overwrite: bool) -> bool:
    """Under the lock: make ``run_dir`` ready for this run; returns whether to resume from a checkpoint.

    A run without a checkpoint (killed before its first one) restarts from
    scratch, with or without ``resume``/``overwrite``.
    """
    run_dir = Path(run_dir)
    check_out(run_dir, resume)
    if resume and has_checkpoint(run_dir):
        return True
    if not resume and is_run(run_dir) and has_checkpoint(run_dir):
        if not overwrite:
            what = "a different run" if stored_config(run_dir) != config else "a run"
            raise RunError(f"{run_dir} already holds {what}; pass --resume to continue it or --overwrite to replace it")
    clear(run_dir)
    write_atomic(run_dir / CONFIG, json.dumps({"config": config, "versions": versions}, indent=2))
    return False


def clear(run_dir: Path) -> None:
    """Remove the files a run writes (and our side files), nothing else."""
    for name in OWNED:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for side in run_dir.glob(BAD_LOG_PREFIX + "*"):
        side.unlink()


def read_log(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete record of a log, in order.

    Lines that do not parse as a record are skipped; with ``repair`` they
    are moved to ``log.jsonl.bad-<time>`` beside it (with a warning) and a
    torn last line from a kill is cut off, so appending continues cleanly.
    Records may hold NaN or Infinity (a diverged run).
    """
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    good: list[bytes] = []
    bad: list[bytes] = []
    records = []
    for line in complete.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
                raise ValueError("not an epoch record")
        except (ValueError, UnicodeDecodeError):
            bad.append(line)
            continue
        records.append(rec)
        good.append(line)
    if repair and (bad or len(complete) != len(raw)):
        if bad:
            side = path.with_name(f"{BAD_LOG_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            side.write_bytes(b"".join(bad))
            warnings.warn(f"{path}: {len(bad)} line(s) that do not parse were moved to {side.name}", stacklevel=2)
        write_atomic(path, b"".join(good).decode("utf-8"))
    return records


def check_log_matches(records: list[dict[str, Any]], checkpoint_epoch: int, log: Path) -> None:
    """A resumable log holds epochs 0..E-1 or 0..E for a checkpoint at epoch E, each once."""
    epochs = [r["epoch"] for r in records]
    if epochs != list(range(len(epochs))) or not checkpoint_epoch - 1 <= len(epochs) - 1 <= checkpoint_epoch:
        shown = f"{epochs[0]}..{epochs[-1]} ({len(epochs)} records)" if epochs else "none"
        raise RunError(f"{log} does not match the checkpoint at epoch {checkpoint_epoch} (logged epochs: {shown}); "
                       "the run cannot be resumed consistently; start it again with --overwrite")


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    write_atomic(Path(run_dir) / RESULT, json.dumps(result, indent=2))


def read_result(run_dir: Path, name: str = RESULT) -> dict[str, Any] | None:
    """A run's ``result.json`` (or another record it wrote, such as ``two_part.json``), None when absent."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a result record")
    return data
