"""The run directory: the one place that reads and writes a run's files (no torch needed).

A run directory holds ``config.json`` (the run format, the config and package
versions), ``log.jsonl`` (one record per epoch), ``result.json``,
``best.safetensors`` / ``best.json``, ``two_part.json`` and ``checkpoints/``
(``latest.json`` and ``epoch-NNNNN/`` folders; the checkpoint module writes them).

Safety rules (README, "Run directories"), each enforced here once:

* **A run is recognised by its marker.** Only a ``config.json`` whose
  ``format`` is ``momos-run`` (written by us, with a version) makes a folder a
  run. Anything else that holds files is refused, with or without
  ``overwrite``; a run written before the marker existed is read (compare,
  two-part) but never changed.
* **Progress is never replaced without ``overwrite``.** A run with a result or
  a checkpoint past its initialisation is refused to a fresh start; a run that
  failed before completing its first epoch is accepted by a plain rerun.
  ``resume`` on a run that cannot be resumed fails and says why; it never
  starts over.
* **Only our names are removed, matched exactly**, and never through a link:
  a symbolic link at one of our names is refused (we never make links).
* A training process holds an exclusive lock (``fcntl.flock`` on
  ``.momos.lock``, opened with ``O_NOFOLLOW``) for its whole life; the OS
  releases it when the process dies, so a killed run can be resumed at once.
"""
from __future__ import annotations

import json
import os
import re
import stat
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kcomplexity.fileio import read_bytes, read_text
from kcomplexity.fileio import write_atomic as _write_atomic

from .errors import RunBusyError, RunError

CONFIG, LOG, RESULT, LOCK = "config.json", "log.jsonl", "result.json", ".momos.lock"
CHECKPOINTS, LATEST = "checkpoints", "latest.json"
#: the marker in config.json that makes a folder a run of ours
FORMAT, FORMAT_VERSION = "momos-run", 1
#: the files a run writes at its top level; overwriting a run removes these and nothing else
OWNED_FILES = (CONFIG, LOG, RESULT, "best.safetensors", "best.json", "two_part.json")
#: what one checkpoint folder holds (checkpoint.py writes them)
CHECKPOINT_FILES = ("model.safetensors", "state.pt", "mosaic.safetensors", "previous.safetensors")
CHECKPOINT_FOLDER = re.compile(r"epoch-\d{5}")
BAD_LOG_PREFIX = LOG + ".bad-"
_BAD_LOG = re.compile(re.escape(BAD_LOG_PREFIX) + r"\d{8}T\d{6}-\d+")
#: write_atomic's temporary files (mkstemp: ".<name>.<random>.tmp") left by a killed write
_TEMP = re.compile(r"\.(?:" + "|".join(re.escape(n) for n in (*OWNED_FILES, LATEST)) + r")\.[A-Za-z0-9_]+\.tmp")


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` atomically, never writing through a link (:func:`kcomplexity.fileio.write_atomic`)."""
    try:
        _write_atomic(path, text)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}") from None


def _load_json(path: Path, what: str) -> Any:
    """A JSON file of a run, read only if it is a regular file; RunError for anything unusable."""
    try:
        return json.loads(read_text(path, what=what))
    except FileNotFoundError:
        raise
    except RecursionError:
        raise RunError(f"{path} is nested too deeply to be a {what}") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                       ) from None


def _config_file(run_dir: Path) -> dict[str, Any]:
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise RunError(f"{run_dir} is a file, not a run directory")
    try:
        data = _load_json(Path(run_dir) / CONFIG, "run config")
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run directory (no config.json)") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise RunError(f"{run_dir}/config.json is not a momos run config")
    return data


def stored_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was started with (read-only use: runs of any format); RunError if not a run."""
    return _config_file(run_dir)["config"]


def is_run(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a config.json carrying our run marker (written by ``momos train``)."""
    try:
        data = _config_file(run_dir)
    except RunError:
        return False
    return data.get("format") == FORMAT and isinstance(data.get("format_version"), int)


def _load_optional_json(path: Path, what: str) -> Any | None:
    """A JSON file of a run, or None when there is nothing at ``path``; RunError for anything unusable."""
    if not os.path.lexists(path):
        return None
    try:
        return _load_json(path, what)
    except FileNotFoundError:
        return None


def read_pointer(root: Path) -> dict[str, Any] | None:
    """``root/latest.json`` (root: a run's ``checkpoints/``) as {"epoch": int, "folder": str}; None when absent,
    RunError when it is not such a pointer."""
    path = Path(root) / LATEST
    pointer = _load_optional_json(path, "checkpoint pointer")
    if pointer is None:
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("epoch"), int) or \
            not isinstance(pointer.get("folder"), str):
        raise RunError(f"{path} is not a checkpoint pointer (it needs an integer epoch and a folder)")
    return pointer


def checkpoint_epoch(run_dir: Path) -> int | None:
    """The epoch ``checkpoints/latest.json`` points at; None when there is none; RunError when unreadable."""
    pointer = read_pointer(Path(run_dir) / CHECKPOINTS)
    return None if pointer is None else pointer["epoch"]


def _progress(run_dir: Path) -> str | None:
    """What a fresh start would destroy in a run of ours: a result or a checkpoint past epoch 0 (None if nothing)."""
    if os.path.lexists(run_dir / RESULT):
        return "a finished run"
    try:
        epoch = checkpoint_epoch(run_dir)
    except RunError:
        return "a run (its checkpoint pointer is damaged)"
    return f"a run (checkpointed at epoch {epoch})" if epoch is not None and epoch >= 1 else None


def _our_leftovers(run_dir: Path) -> bool:
    """Does the folder hold only what a failed start of ours leaves (the lock, temporary files)?"""
    return all(p.name == LOCK or _TEMP.fullmatch(p.name) for p in run_dir.iterdir())


def check_out(run_dir: Path, resume: bool, overwrite: bool = False, config: dict[str, Any] | None = None) -> None:
    """Refuse, before anything is written, an ``--out`` that we may not use (RunError saying why)."""
    run_dir = Path(run_dir)
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise RunError(f"{run_dir} cannot be a run directory: {parent} is a file")
    exists = run_dir.is_dir()
    if resume:
        if not is_run(run_dir):
            raise RunError(f"nothing to resume: {run_dir} holds no run of ours (no config.json with the "
                           f"{FORMAT} marker)")
        epoch = checkpoint_epoch(run_dir)
        if epoch is None:
            raise RunError(f"{run_dir} cannot be resumed: it has no checkpoint (checkpoints/{LATEST} is missing); "
                           "start it again without --resume")
        return
    if not exists or _our_leftovers(run_dir):
        return
    if not is_run(run_dir):
        legacy = (run_dir / CONFIG).is_file() and _safe(lambda: stored_config(run_dir))
        raise RunError(f"{run_dir} is not a run directory: it holds files but no run of ours"
                       + (" (its config.json has no run-format marker: written before momos 0.2 or by another tool)"
                          if legacy else "")
                       + "; choose another --out: nothing there was changed")
    what = _progress(run_dir)
    if what and not overwrite:
        if config is not None and _safe(lambda: stored_config(run_dir)) != config:
            what = what.replace("a finished run", "a different run (finished)").replace("a run (", "a different run (")
        raise RunError(f"{run_dir} already holds {what}; pass --resume to continue it or --overwrite to replace it")
    _refuse_links(run_dir)


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except RunError:
        return None


def _refuse_links(run_dir: Path) -> None:
    """We never make symbolic links: one at a name of ours was put there by someone else, so leave it be."""
    names = [run_dir / n for n in (*OWNED_FILES, CHECKPOINTS)] + [run_dir / CHECKPOINTS / LATEST]
    if (run_dir / CHECKPOINTS).is_dir() and not (run_dir / CHECKPOINTS).is_symlink():
        names += [p for p in (run_dir / CHECKPOINTS).iterdir() if CHECKPOINT_FOLDER.fullmatch(p.name)]
    for path in names:
        if path.is_symlink():
            raise RunError(f"{path} is a symbolic link, which momos never makes; move it away or choose "
                           "another --out: nothing was changed")


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's exclusive lock; RunError naming the holder's pid if another process has it.

    A folder this call created is removed again if the body fails while it
    holds nothing but the lock, so a failed start leaves nothing behind.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {run_dir}: {exc.strerror or exc}") from None
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield
        return
    fd = _open_lock(run_dir / LOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunBusyError(f"{run_dir} is in use by another training process (pid {holder}); "
                           "wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        except BaseException:
            if created and all(p.name == LOCK for p in run_dir.iterdir()):
                (run_dir / LOCK).unlink()
                run_dir.rmdir()
            raise
    finally:
        os.close(fd)  # closing releases the lock


def _open_lock(path: Path) -> int:
    """The lock file, opened without following a link or blocking on a FIFO; RunError for anything but a file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        why = "is a symbolic link (momos never makes one)" if os.path.islink(path) else \
            "is a directory" if os.path.isdir(path) else (exc.strerror or str(exc))
        raise RunError(f"cannot take the run lock: {path} {why}; remove it or choose another --out") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"cannot take the run lock: {path} is not a regular file; remove it or choose another --out")
    os.set_blocking(fd, True)
    return fd


def prepare(run_dir: Path, config: dict[str, Any], versions: dict[str, str], resume: bool, overwrite: bool) -> bool:
    """Under the lock: make ``run_dir`` ready for this run; returns whether to resume from a checkpoint.

    The checks of :func:`check_out` are repeated under the lock (another
    process may have written in between). A fresh start clears only our names.
    """
    run_dir = Path(run_dir)
    check_out(run_dir, resume, overwrite, config)
    if resume:
        return True
    clear(run_dir)
    write_atomic(run_dir / CONFIG, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config,
                                               "versions": versions}, indent=2))
    return False


def clear(run_dir: Path) -> None:
    """Remove the files a run writes, matched by exact name, and nothing else (a user's file inside stays)."""
    run_dir = Path(run_dir)
    _refuse_links(run_dir)
    for name in OWNED_FILES:
        _unlink_if_file(run_dir / name)
    for side in run_dir.iterdir():
        if _BAD_LOG.fullmatch(side.name) or _TEMP.fullmatch(side.name):
            _unlink_if_file(side)
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for folder in root.iterdir():
            if CHECKPOINT_FOLDER.fullmatch(folder.name) and folder.is_dir():
                remove_checkpoint_folder(folder)
            elif folder.name == LATEST or _TEMP.fullmatch(folder.name):
                _unlink_if_file(folder)
        _rmdir_if_empty(root)


def remove_checkpoint_folder(folder: Path) -> None:
    """Remove one ``epoch-NNNNN`` folder's files of ours (and the folder when nothing else is left in it)."""
    if folder.is_symlink():
        return
    for name in CHECKPOINT_FILES:
        _unlink_if_file(folder / name)
    for tmp in folder.iterdir():
        if tmp.name.endswith(".tmp") and tmp.name.startswith("."):
            _unlink_if_file(tmp)
    _rmdir_if_empty(folder)


def _unlink_if_file(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        path.unlink()


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # holds someone's files: leave it
        pass


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
    try:
        raw = read_bytes(path, what="run log")
    except OSError as exc:
        raise RunError(f"{path} is unreadable ({exc})") from None
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
        except (ValueError, UnicodeDecodeError, RecursionError):
            bad.append(line)
            continue
        records.append(rec)
        good.append(line)
    if repair and (bad or len(complete) != len(raw)):
        if bad:
            side = path.with_name(f"{BAD_LOG_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            write_atomic(side, b"".join(bad))
            warnings.warn(f"{path}: {len(bad)} line(s) that do not parse were moved to {side.name}", stacklevel=2)
        write_atomic(path, b"".join(good).decode("utf-8"))
    return records


class RunLog:
    """A run's ``log.jsonl``: one durable JSON line per epoch, appended; read back whole, torn lines repaired."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOG

    def append(self, record: dict[str, Any]) -> None:
        """Append one epoch's record and make it durable (flush + fsync) before returning."""
        from kcomplexity.callbacks import append_jsonl

        append_jsonl(self.path, record)

    def read(self, repair: bool = False) -> list[dict[str, Any]]:
        return read_log(self.path, repair)

    def check_matches(self, records: list[dict[str, Any]], checkpoint_epoch: int) -> None:
        check_log_matches(records, checkpoint_epoch, self.path)


def check_log_matches(records: list[dict[str, Any]], checkpoint_epoch: int, log: Path) -> None:
    """A log that can continue a checkpoint at epoch E: epochs strictly increasing, none past E, E-1 or E last.

    Gaps (lines that were damaged and moved aside by :func:`read_log`) are
    allowed with a warning; a log ahead of the checkpoint, one with repeated
    or reordered epochs, or one that ends before E-1 truly disagrees with it.
    """
    epochs = [r["epoch"] for r in records]
    ordered = all(a < b for a, b in zip(epochs, epochs[1:]))
    last = epochs[-1] if epochs else -1
    if not ordered or not checkpoint_epoch - 1 <= last <= checkpoint_epoch:
        shown = f"{epochs[0]}..{epochs[-1]} ({len(epochs)} records)" if epochs else "none"
        raise RunError(f"{log} does not match the checkpoint at epoch {checkpoint_epoch} (logged epochs: {shown}); "
                       "the run cannot be resumed consistently; start it again with --overwrite")
    missing = sorted(set(range(last + 1)) - set(epochs))
    if missing:
        warnings.warn(f"{log}: epochs {', '.join(map(str, missing[:10]))} have no record (their lines were "
                      "damaged); the run resumes with that gap", stacklevel=2)


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    write_atomic(Path(run_dir) / RESULT, json.dumps(result, indent=2))


def read_result(run_dir: Path, name: str = RESULT) -> dict[str, Any] | None:
    """A run's ``result.json`` (or another record it wrote, such as ``two_part.json``), None when absent."""
    path = Path(run_dir) / name
    data = _load_optional_json(path, "result record")
    if data is None:
        return None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a result record")
    return data
