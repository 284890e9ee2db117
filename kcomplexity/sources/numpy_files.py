"""numpy files (``.npy``, ``.npz``), with every size a header claims checked against the file before reading."""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, EmptyTensorError, KComplexityError, NonNumericError, UnsafeCheckpointError
from .arrays import Source, _from_items, _one_line

#: an .npz member may expand at most this much (beyond 256 MiB): real weights compress far less
MAX_NPZ_EXPANSION = 200


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
