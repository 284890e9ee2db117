"""The one place files are opened for reading and written: three rules, each enforced here once.

* **Only regular files are read.** A path is resolved (links followed), opened
  without blocking and checked with ``fstat``: a FIFO, socket, device or
  directory is refused before a byte is read, so nothing hangs. Every read has
  a size limit, checked before the bytes are allocated.
* **Outputs are never inputs.** An output is refused when it resolves to a file
  an input reads or lies inside a folder an input reads (a model folder, a
  Hugging Face cache entry, a data folder, a run).
* **Writes are atomic and never follow a link we did not make.** Output goes
  to a fresh temporary file beside the target (``O_EXCL``: an existing name or
  link there is never opened) and is renamed over it, so a failure leaves the
  old file or none, never half a file, and a symlink at the target is replaced,
  not written through.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import KComplexityError

# mkstemp creates files 0600; our outputs get the mode a plain open() would give them
_UMASK = os.umask(0)
os.umask(_UMASK)

#: the largest text file (configs, logs, indexes, pointers) read whole
TEXT_LIMIT = 256 * 2 ** 20


class FileTypeError(KComplexityError, OSError):
    """A path that is not a regular file (FIFO, socket, device, directory) where a file is read."""


class OutputIsInputError(KComplexityError, ValueError):
    """An output path that would overwrite or land inside something an input reads."""


class OutputExistsError(KComplexityError, FileExistsError):
    """The output exists (or appeared while it was being written) and replacing it was not asked for."""


def open_regular(path: str | os.PathLike, what: str = "file") -> int:
    """A read-only descriptor of ``path`` once it is known to be a regular file (links followed).

    Opened with ``O_NONBLOCK`` so a FIFO cannot block the open; FileTypeError
    for anything but a regular file; FileNotFoundError passes through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise FileTypeError(f"{path} is a directory, not a {what}") from None
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):  # a path no file can have: our error, one line
            raise FileTypeError(f"cannot read {str(path)[:200]}: {exc.strerror}") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise FileTypeError(f"{path} is {kind}, not a {what}")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: str | os.PathLike, limit: int = TEXT_LIMIT, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (FileTypeError otherwise; checked before reading)."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise FileTypeError(f"{path} is {size:,} bytes, over the {limit:,}-byte limit for a {what}")
        chunks, total = [], 0
        while True:  # read to EOF, still bounded: the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileTypeError(f"{path} grew past the {limit:,}-byte limit for a {what} while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike, limit: int = TEXT_LIMIT, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8 (undecodable bytes raise UnicodeDecodeError, a ValueError)."""
    return read_bytes(path, limit, what).decode("utf-8")


def write_atomic(path: str | os.PathLike, data: str | bytes, replace: bool = True) -> None:
    """Write ``data`` to ``path``: readers see the old file or the new one, never a mix or a half
    (``replace=False``: :class:`OutputExistsError` if anything is at ``path`` when the file is published)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_writer(path, replace) as fh:
        fh.write(raw)


@contextmanager
def atomic_writer(path: str | os.PathLike, replace: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only when the block ends without an exception (streamed writes of
    any size; an error or interrupt removes the partial file and leaves ``path`` as it was).

    The temporary file is created with ``O_EXCL`` (``mkstemp``), so a file or
    symlink a user left at any name is never opened; ``os.replace`` swaps a
    symlink at ``path`` itself for our file rather than writing through it.
    With ``replace=False`` the file is published by a hard link, which fails
    when any name exists at ``path``, so a file created there while we wrote
    (another run, a user) is kept and :class:`OutputExistsError` is raised;
    a check before the work cannot promise that, only the publishing step can.
    """
    if "\0" in str(path):
        raise FileTypeError(f"cannot write {str(path)!r}: the path holds a NUL byte")
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise FileTypeError(f"cannot write {path}: it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _publish_new(tmp: str, path: Path) -> None:
    """Give the finished ``tmp`` the name ``path`` unless something already has it (no-replace publish)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise OutputExistsError(f"{path} exists (it appeared while this output was written); "
                                "pass --overwrite (overwrite=True) to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # a file system without hard links: O_EXCL creation of the name is still no-replace
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666 & ~_UMASK)
        except FileExistsError:
            raise OutputExistsError(f"{path} exists (it appeared while this output was written); "
                                    "pass --overwrite (overwrite=True) to replace it") from None
        os.close(fd)
        os.replace(tmp, path)  # the name is ours now (an empty file we made), so replacing it loses nothing
        return
    os.unlink(tmp)


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with every existing link resolved (a missing tail stays as written)."""
    return Path(os.path.realpath(os.fspath(path)))


def refuse_output_into(output: str | os.PathLike | None, inputs: Iterable[str | os.PathLike]) -> None:
    """OutputIsInputError when ``output`` resolves to an input file or lies inside an input folder.

    ``inputs`` are every file and folder an input reads (weights, shards,
    indexes, cache entries, data folders, runs); links are resolved on both
    sides, so a path that reaches an input through a link is caught too.
    """
    if output is None:
        return
    if "\0" in str(output):  # no file can have that name: the writer refuses it with its own message
        return
    out = resolved(output)
    for item in inputs:
        if item is None or "\0" in str(item):  # no file has that name: reading it fails with its own error
            continue
        src = resolved(item)
        if out == src or (src.is_dir() and src in out.parents):
            where = "is" if out == src else "lies inside"
            raise OutputIsInputError(f"output {output} {where} the input {item}; choose a path outside the inputs")
