"""Readers of the data sets' own archive formats, without torchvision: CIFAR-10's python version and the idx files
of Fashion-MNIST.

* CIFAR-10 (``cifar-10-python.tar.gz``, or its extracted ``cifar-10-batches-py/``): ``data_batch_1`` ..
  ``data_batch_5`` and ``test_batch``, each a protocol-2 pickle of a dict with bytes keys: ``b"data"`` a uint8
  array N x 3072 (1,024 red, 1,024 green, 1,024 blue values, each a row-major 32 x 32 image) and ``b"labels"``
  a list of N ints in 0..9. Members are read from the archive in memory (never extracted), unpickled by
  the numpy-only unpickler momos.data passes in, and every batch's shape, dtype and labels are checked against the
  format.
* Fashion-MNIST: the MNIST idx format gzipped, under MNIST's file names (``train-images-idx3-ubyte.gz``, ...),
  read by :func:`momos.data.idx_dir`.

Both give images (N, C, 32 or 28, ...) float32 in [0, 1] and int64 labels, the test split apart.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
#: the most bytes one batch may hold (the official ones are about 31 MB each)
BATCH_LIMIT = 64 << 20


def cifar10(data_dir: str | None, unpickler: type) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's (train, test) images (N, 3, 32, 32) float32 in [0, 1] and labels, from the python-version
    archive or its extracted folder under ``data_dir``; DataError naming what is missing or damaged."""
    if data_dir is None:
        raise DataError(f"cifar10 needs --data-dir: a folder with {CIFAR_ARCHIVE} or {CIFAR_FOLDER}/ "
                        "(--download fetches it through torchvision where that imports)")
    root = Path(data_dir)
    folder = next((f for f in (root / CIFAR_FOLDER, root) if (f / CIFAR_TEST).is_file()), None)
    if folder is not None:
        def member(name: str) -> bytes:
            from kcomplexity.fileio import read_bytes

            path = folder / name
            if not path.is_file():
                raise DataError(f"{folder} lacks the CIFAR-10 batch {name}")
            return read_bytes(path, limit=BATCH_LIMIT, what="CIFAR-10 batch")
        return _batches(member, str(folder), unpickler)
    archive = root / CIFAR_ARCHIVE if (root / CIFAR_ARCHIVE).is_file() else root if root.is_file() else None
    if archive is None:
        raise DataError(f"{root} holds neither {CIFAR_ARCHIVE} nor {CIFAR_FOLDER}/ (CIFAR-10's python version); "
                        "--download fetches it through torchvision where that imports")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers()}

            def member(name: str) -> bytes:
                info = members.get(f"{CIFAR_FOLDER}/{name}")
                if info is None or not info.isfile():
                    raise DataError(f"{archive} lacks the CIFAR-10 batch {CIFAR_FOLDER}/{name}")
                if info.size > BATCH_LIMIT:
                    raise DataError(f"{archive}: {name} is {info.size:,} bytes, more than a batch holds")
                return tar.extractfile(info).read()
            return _batches(member, str(archive), unpickler)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive} is not a readable CIFAR-10 archive (truncated or another format: "
                        f"{str(exc).splitlines()[0][:120]})") from None


def _batches(member, where: str, unpickler: type) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    train = [_batch(member(name), f"{where}: {name}", unpickler) for name in CIFAR_TRAIN]
    test = _batch(member(CIFAR_TEST), f"{where}: {CIFAR_TEST}", unpickler)
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    return (x, y), test


def _batch(raw: bytes, what: str, unpickler: type) -> tuple[np.ndarray, np.ndarray]:
    """One batch's images (N, 3, 32, 32) float32 in [0, 1] and labels, checked against the format."""
    try:
        batch = unpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{what} is not a CIFAR-10 batch ({str(exc)[:120]})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{what} is not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or data.shape[0] == 0:
        shape = getattr(data, "shape", None)
        raise DataError(f"{what}: b'data' must be a uint8 array N x 3072, got {getattr(data, 'dtype', type(data))} "
                        f"{shape}")
    if not isinstance(labels, list) or len(labels) != data.shape[0] \
            or not all(type(v) is int for v in labels):
        raise DataError(f"{what}: b'labels' must be a list of {data.shape[0]:,} ints")
    y = np.asarray(labels, dtype=np.int64)
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{what}: label {int(y.min() if y.min() < 0 else y.max())} is outside CIFAR-10's 0..9")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0), y


def fashion_mnist(data_dir: str | None, idx_dir) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST's (train, test) images (N, 1, 28, 28) float32 in [0, 1] and labels from its idx files."""
    if data_dir is None:
        raise DataError("fashion-mnist needs --data-dir: a folder with its idx files (train-images-idx3-ubyte.gz, "
                        "...); --download fetches them through torchvision where that imports")
    return idx_dir(Path(data_dir), "Fashion-MNIST", ("FashionMNIST",))


__all__ = ["cifar10", "fashion_mnist", "CIFAR_ARCHIVE", "CIFAR_FOLDER"]
