"""CIFAR-10 and Fashion-MNIST from their own archive formats, without torchvision (#30): small files written
here in exactly those formats, trained on, and their damaged variants refused in one line."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

from momos import data
from momos.cli import main
from momos.errors import DataError
from momos.official_files import CIFAR_ARCHIVE, CIFAR_FOLDER, CIFAR_TEST, CIFAR_TRAIN

N = 20  # images per batch


def _batch(seed: int, n: int = N, columns: int = 3072, labels=None) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"training batch", b"labels": labels if labels is not None else
             [int(v) for v in rng.integers(0, 10, n)], b"data": rng.integers(0, 256, (n, columns), dtype=np.uint8),
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    return pickle.dumps(batch, protocol=2)  # the official batches are protocol-2 pickles with bytes keys


def _cifar_members(**bad) -> dict[str, bytes]:
    members = {name: _batch(i) for i, name in enumerate(CIFAR_TRAIN)}
    members[CIFAR_TEST] = _batch(9)
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    members.update(bad)
    return members


def _write_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"{CIFAR_FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_cifar10_reads_the_official_archive_and_folder_and_trains(tmp_path, layout):
    members = _cifar_members()
    if layout == "archive":
        _write_archive(tmp_path / CIFAR_ARCHIVE, members)
    else:
        (tmp_path / CIFAR_FOLDER).mkdir()
        for name, raw in members.items():
            (tmp_path / CIFAR_FOLDER / name).write_bytes(raw)
    ds = data.load("cifar10", data_dir=str(tmp_path), val_fraction=0.1)
    assert ds.input_shape == (3, 32, 32) and len(ds.train) + len(ds.val) == 5 * N and len(ds.test) == N
    # pixel layout: 1,024 red, then green, then blue values, each a row-major 32 x 32 image
    first = pickle.loads(members[CIFAR_TEST])
    assert np.array_equal(ds.test.x[0, 1, 0, :3].numpy() * 255, first[b"data"][0, 1024:1027].astype(np.float32))
    assert ds.test.x[0, 2, 1, 0] * 255 == pytest.approx(float(first[b"data"][0, 2048 + 32]))
    assert ds.test.y.tolist() == first[b"labels"]
    assert main(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--width", "8",
                 "-e", "lzma", "--out", str(tmp_path / "run"), "--quiet"]) == 0


@pytest.mark.parametrize("damage,message", [
    ("truncated", "not a readable CIFAR-10 archive"), ("format", "not a readable CIFAR-10 archive"),
    ("shape", "uint8 array N x 3072"), ("labels", "outside CIFAR-10's 0..9"), ("missing", "lacks the CIFAR-10 batch"),
    ("pickle", "not a CIFAR-10 batch")])
def test_damaged_cifar10_archives_are_one_line(tmp_path, capsys, damage, message):
    path = tmp_path / CIFAR_ARCHIVE
    if damage == "format":
        path.write_bytes(b"PK\x03\x04 not a tar archive")
    else:
        bad = {"shape": {CIFAR_TRAIN[2]: _batch(2, columns=3071)},
               "labels": {CIFAR_TEST: _batch(9, labels=[10] * N)},
               "pickle": {CIFAR_TRAIN[0]: pickle.dumps({b"data": print}, protocol=2)}}.get(damage, {})
        members = _cifar_members(**bad)
        if damage == "missing":
            del members[CIFAR_TRAIN[4]]
        _write_archive(path, members)
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=message):
        data.load("cifar10", data_dir=str(tmp_path))
    assert main(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message.split("(")[0].strip() in err and "Traceback" not in err and not (tmp_path / "run").exists()


def _idx(path, array: np.ndarray) -> None:
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))


def _fashion(root, labels_max: int = 9) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 20)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, labels_max + 1, n))


def test_fashion_mnist_reads_its_idx_files_and_trains(tmp_path):
    _fashion(tmp_path)
    ds = data.load("fashion-mnist", data_dir=str(tmp_path))
    assert ds.input_shape == (1, 28, 28) and len(ds.test) == 20 and float(ds.train.x.max()) <= 1.0
    assert main(["train", "--data", "fashion-mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--width", "8",
                 "-e", "lzma", "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_fashion_mnist_damaged_or_missing_files_are_one_line(tmp_path, capsys):
    _fashion(tmp_path, labels_max=12)
    with pytest.raises(DataError, match="Fashion-MNIST labels are 0..9"):
        data.load("fashion-mnist", data_dir=str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", "fashion-mnist", "--data-dir", str(empty), "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "lacks the Fashion-MNIST file" in capsys.readouterr().err
    assert main(["train", "--data", "cifar10", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    assert "--download fetches it through torchvision" in capsys.readouterr().err
