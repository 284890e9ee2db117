"""Prequential (online) code of a data set's labels, after Blier & Ollivier (NeurIPS 2018).

The labels are sent in chunks [t_0 = 0, t_1), [t_1, t_2), ..., [t_(K-1), N).
The first chunk is coded uniformly (log2 C bits a label). Every later chunk
is coded with the predictions of a network trained only on the labels
already sent; both sides can train it, so the network itself is never
transmitted. The code is real: one ANS stream (:mod:`kcomplexity.codecs.labels`)
that :func:`decode` turns back into the labels by retraining the same
networks in the same order (same seeds, same machine and library versions:
training must repeat bit for bit).

Early stopping uses labels already sent: every tenth example of the
(seeded) order is held out from training and used to pick the epoch (and,
with ``calibrate``, a softmax temperature). Options, each reported apart:
``calibrate`` (temperature fitted on the held-out labels), several models
with switching (the best model per chunk, its index coded in the stream at
log2 M bits), ``warm_start`` (continue from the previous chunk's network),
``anneal`` (smaller steps from the best epoch after each bad one),
``augment`` (training images shifted by a few pixels at random) and
``ensemble`` (several networks per model, their predictions averaged).
"""
from __future__ import annotations

import copy
import math
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from kcomplexity.codecs import labels as label_code
from kcomplexity.checks import seed as check_seed

from . import data as data_mod, models
from .config import check_device
from .errors import PrequentialError
from .evaluation import batched_logits, probabilities

#: every HOLDOUT-th example of the order is held out for early stopping (and calibration)
HOLDOUT = 10


@dataclass
class Chunk:
    """One chunk of the code: labels [start, end) coded with a model trained on [0, start)."""

    start: int
    end: int
    trained_on: int          #: examples the model was fitted on (the rest of [0, start) chose the epoch)
    epochs: int              #: epochs of the kept (best held-out loss) model, the most of an ensemble's; 0: uniform
    bits: float              #: -log2 p of the chunk's labels, plus the switch index when switching
    model: str               #: the model that coded it ("uniform" for the first chunk)
    temperature: float | None = None  #: softmax temperature fitted with calibrate (on an ensemble's mean)

    @property
    def n(self) -> int:
        return self.end - self.start

    @property
    def bits_per_label(self) -> float:
        return self.bits / self.n


@dataclass
class PrequentialResult:
    """A prequential code: per-chunk figures, the code itself and its length (bits)."""

    data: str
    models: list[str]
    classes: int
    chunks: list[Chunk]
    code: bytes = field(repr=False)
    options: dict[str, Any]
    seconds: float

    @property
    def n(self) -> int:
        return self.chunks[-1].end

    @property
    def total_bits(self) -> int:
        """Length of the real code, in bits (whole 32-bit words)."""
        return 8 * len(self.code)

    @property
    def ideal_bits(self) -> float:
        """Sum of -log2 p over all labels (and switch indices): what an ideal coder would spend."""
        return float(sum(c.bits for c in self.chunks))

    @property
    def uniform_bits(self) -> float:
        """The labels coded uniformly: n log2 C."""
        return self.n * math.log2(self.classes)

    @property
    def ratio(self) -> float:
        """total_bits / uniform_bits."""
        return self.total_bits / self.uniform_bits

    def to_frame(self) -> Any:
        """One row per chunk, with the cumulative bits."""
        import pandas as pd

        rows = [{**asdict(c), "labels": c.n, "bits_per_label": c.bits_per_label} for c in self.chunks]
        frame = pd.DataFrame(rows)
        frame["cumulative_bits"] = frame["bits"].cumsum()
        return frame

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "models": self.models, "classes": self.classes, "n": self.n,
                "total_bits": self.total_bits, "ideal_bits": self.ideal_bits, "uniform_bits": self.uniform_bits,
                "ratio": self.ratio, "options": self.options, "seconds": self.seconds,
                "chunks": [{**asdict(c), "bits_per_label": c.bits_per_label} for c in self.chunks]}

    def to_csv(self) -> str:
        return self.to_frame().to_csv(index=False)

    def table(self) -> str:
        """Human-readable per-chunk table and totals."""
        frame = self.to_frame()
        cols = ["start", "end", "trained_on", "epochs", "model", "temperature", "bits", "bits_per_label"]
        text = frame[cols].to_string(index=False, float_format=lambda v: f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}")
        return (f"{text}\n\nprequential code: {self.total_bits:,} bits (ideal {self.ideal_bits:,.1f}) for "
                f"{self.n:,} labels; uniform code {self.uniform_bits:,.0f} bits; ratio {self.ratio:.4f}")

    def plot(self, path: str | Path) -> Path:
        """Cumulative bits against labels sent, beside the uniform code (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from kcomplexity.rd import save_figure

        ends = [0] + [c.end for c in self.chunks]
        cum = np.concatenate([[0.0], np.cumsum([c.bits for c in self.chunks])])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ends, cum, marker="o", label=f"prequential ({'+'.join(self.models)})")
        ax.plot([0, self.n], [0, self.uniform_bits], linestyle="--", color="grey", label="uniform")
        ax.set_xlabel("labels sent")
        ax.set_ylabel("cumulative bits")
        ax.set_title(f"{self.data}: {self.total_bits:,} bits for {self.n:,} labels")
        ax.legend()
        fig.tight_layout()
        return save_figure(fig, path)


def default_chunks(n: int, first: int = 64) -> list[int]:
    """Boundaries doubling from ``first``: 64, 128, 256, ... below n."""
    out, t = [], first
    while t < n:
        out.append(t)
        t *= 2
    return out


def check_chunks(chunks: Sequence[int], n: int) -> list[int]:
    """Validated boundaries t_1 < ... < t_(K-1) < n (n itself may be listed; it is implied)."""
    bounds = [int(c) for c in chunks]
    if any(b != c for b, c in zip(bounds, chunks)):
        raise PrequentialError(f"chunk boundaries must be whole numbers, got {list(chunks)}")
    if bounds and bounds[-1] == n:
        bounds = bounds[:-1]
    if not bounds:
        raise PrequentialError("give at least one chunk boundary below the number of labels")
    if any(b >= a for a, b in zip(bounds[1:], bounds[:-1])):
        raise PrequentialError(f"chunk boundaries must increase, got {list(chunks)}")
    if bounds[-1] > n:
        raise PrequentialError(f"chunk boundary {bounds[-1]:,} exceeds the data set ({n:,} labels)")
    if bounds[0] < HOLDOUT:
        raise PrequentialError(f"the first chunk ({bounds[0]} labels) leaves no labels for early stopping: every "
                               f"{HOLDOUT}th label sent is held out, so the first boundary must be >= {HOLDOUT}")
    return bounds


@dataclass(frozen=True)
class TrainOptions:
    """How each chunk's model is fitted."""

    max_epochs: int = 50
    patience: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    calibrate: bool = False
    warm_start: bool = False
    anneal: bool = False
    augment: int = 0         #: shift training images by up to this many pixels (0: no augmentation)
    ensemble: int = 1        #: networks per model and chunk, trained from different seeds, predictions averaged


#: the largest shift --augment takes: images are at most 32 pixels wide, and each batch is padded by it
MAX_AUGMENT = 16


def prequential(model: str | Sequence[str] = "mlp", data: str = "digits", chunks: Sequence[int] | None = None,
                seed: int = 0, calibrate: bool = False, warm_start: bool = False, max_epochs: int = 50,
                patience: int = 3, lr: float = 1e-3, batch_size: int = 32, limit: int | None = None,
                device: str = "cpu", data_dir: str | None = None, quiet: bool = False,
                anneal: bool = False, augment: int = 0, ensemble: int = 1) -> PrequentialResult:
    """Prequential code length (bits) of the training labels of ``data`` under ``model``.

    ``model`` may list several registered models: each chunk is then coded
    by whichever is best on it, and its index costs log2 M bits in the code
    (switching). ``anneal`` returns to the best epoch and divides the
    learning rate by 3 after every epoch without held-out improvement
    (instead of only counting it). ``augment`` shifts each training image by
    a random whole number of pixels, up to ``augment`` each way, every time
    it is drawn. ``ensemble`` trains that many networks per model and chunk
    (different seeds) and codes with the mean of their predicted
    distributions (with ``calibrate``, one temperature fitted to that mean).
    ``chunks`` are the boundaries t_1 < t_2 < ... (default: doubling from
    64). The labels are all of the data set's training data (its train and
    validation splits) in an order drawn from ``seed``; ``limit`` keeps the
    first ``limit`` of them.
    """
    names = [model] if isinstance(model, str) else list(model)
    check_seed(seed, PrequentialError)
    check_device(device)
    x, y, classes = labels_in_order(data, seed, limit, data_dir)
    bounds = check_chunks(default_chunks(len(y)) if chunks is None else chunks, len(y))
    opts = _options(names, max_epochs, patience, lr, batch_size, calibrate, warm_start, anneal, augment, ensemble)
    start = time.perf_counter()
    run = _Run(names, x, classes, bounds, opts, seed, torch.device(device), quiet)
    records, segments = run.encode(y)
    code = label_code.encode_labels(segments)
    options = {"chunks": bounds, "seed": seed, "limit": limit, **asdict(opts)}
    return PrequentialResult(data, names, classes, records, code, options, time.perf_counter() - start)


def decode(result: PrequentialResult, data_dir: str | None = None, device: str = "cpu",
           quiet: bool = True) -> np.ndarray:
    """The labels, decoded from ``result.code`` by retraining the same models chunk by chunk.

    Only the inputs are read from the data set (in the same seeded order); every label comes out of the code.
    """
    o = result.options
    x, _, classes = labels_in_order(result.data, o["seed"], o["limit"], data_dir)
    opts = TrainOptions(**{k: o[k] for k in TrainOptions.__dataclass_fields__ if k in o})
    run = _Run(result.models, x, classes, o["chunks"], opts, o["seed"], torch.device(device), quiet)
    return run.decode(label_code.LabelDecoder(result.code))


def _options(names: list[str], max_epochs: int, patience: int, lr: float, batch_size: int, calibrate: bool,
             warm_start: bool, anneal: bool, augment: int, ensemble: int) -> TrainOptions:
    for name in names:
        if name not in models.MODELS:
            raise PrequentialError(f"unknown model '{name}'; available: {', '.join(models.MODELS)}")
    if len(set(names)) != len(names):
        raise PrequentialError(f"each model may be listed once, got {', '.join(names)}")
    if max_epochs < 1 or patience < 1 or batch_size < 1 or not lr > 0:
        raise PrequentialError("max_epochs, patience and batch_size must be >= 1 and lr > 0")
    if not 0 <= augment <= MAX_AUGMENT:
        raise PrequentialError(f"augment is a shift in pixels, in 0..{MAX_AUGMENT} (a padded copy of every batch "
                               f"grows with it), got {augment}")
    if ensemble < 1:
        raise PrequentialError(f"ensemble is a number of networks (>= 1), got {ensemble}")
    return TrainOptions(max_epochs, patience, float(lr), batch_size, calibrate, warm_start, anneal, augment, ensemble)


def labels_in_order(name: str, seed: int, limit: int | None = None, data_dir: str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(inputs, labels, classes): all training examples of a data set (train + validation splits) in the
    seeded order a prequential code sends them; ``limit`` keeps the first ``limit``."""
    ds = data_mod.load(name, seed=seed, data_dir=data_dir)
    if ds.tokens:
        raise PrequentialError(f"{name} gives token inputs; prequential codes are for image data sets")
    x, y = torch.cat([ds.train.x, ds.val.x]), torch.cat([ds.train.y, ds.val.y])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if limit is not None:
        if limit < 2 * HOLDOUT:
            raise PrequentialError(f"limit must be >= {2 * HOLDOUT}, got {limit}")
        order = order[:limit]
    return x[order].contiguous(), y[order].contiguous(), ds.num_classes


class _Run:
    """The chunk loop, shared by the encoder (labels known) and the decoder (labels decoded as it goes)."""

    def __init__(self, names: list[str], x: torch.Tensor, classes: int, bounds: Sequence[int], opts: TrainOptions,
                 seed: int, device: torch.device, quiet: bool) -> None:
        self.names, self.x, self.classes, self.opts, self.seed = names, x, classes, opts, seed
        self.edges = [0, *bounds, len(x)]
        self.device, self.quiet = device, quiet
        self.nets: dict[str, torch.nn.Module] = {}

    def encode(self, y: torch.Tensor) -> tuple[list[Chunk], list[tuple[np.ndarray, np.ndarray]]]:
        records, segments = [], []
        for i, (lo, hi, fitted) in enumerate(self._chunks(y)):
            labels = y[lo:hi].numpy()
            if not fitted:
                probs = label_code.uniform(hi - lo, self.classes)
                segments.append((probs, labels))
                records.append(Chunk(lo, hi, 0, 0, label_code.ideal_bits(probs, labels), "uniform"))
                continue
            bits = [label_code.ideal_bits(f["probs"], labels) for f in fitted]
            pick = int(np.argmin(bits))
            switch = math.log2(len(fitted)) if len(fitted) > 1 else 0.0
            if len(fitted) > 1:
                segments.append((label_code.uniform(1, len(fitted)), np.array([pick])))
            segments.append((fitted[pick]["probs"], labels))
            f = fitted[pick]
            records.append(Chunk(lo, hi, f["trained_on"], f["epochs"], bits[pick] + switch, self.names[pick],
                                 f["temperature"]))
        return records, segments

    def decode(self, decoder: label_code.LabelDecoder) -> np.ndarray:
        y = torch.zeros(len(self.x), dtype=torch.int64)
        for lo, hi, fitted in self._chunks(y):
            if not fitted:
                probs = label_code.uniform(hi - lo, self.classes)
            else:
                pick = int(decoder.decode(label_code.uniform(1, len(fitted)))[0]) if len(fitted) > 1 else 0
                if pick >= len(fitted):
                    raise PrequentialError("corrupt prequential code: model index out of range")
                probs = fitted[pick]["probs"]
            y[lo:hi] = torch.from_numpy(decoder.decode(probs))
        decoder.finish()
        return y.numpy()

    def _chunks(self, y: torch.Tensor) -> Any:
        """Yield (start, end, fitted models' predictions) chunk by chunk; ``y`` must hold labels < start by then."""
        edges = self.edges
        bar = tqdm(range(len(edges) - 1), desc=f"prequential {'+'.join(self.names)}", unit="chunk",
                   disable=self.quiet, file=sys.stderr)
        for i in bar:
            lo, hi = edges[i], edges[i + 1]
            if i == 0:
                yield lo, hi, None
                continue
            fitted = [self._fit_and_predict(name, i, lo, hi, y) for name in self.names]
            bar.set_postfix(sent=lo, epochs=",".join(str(f["epochs"]) for f in fitted))
            yield lo, hi, fitted

    def _fit_and_predict(self, name: str, chunk: int, lo: int, hi: int, y: torch.Tensor) -> dict[str, Any]:
        """Train ``opts.ensemble`` networks of ``name`` on [0, lo) and average their predictions for [lo, hi)."""
        opts = self.opts
        seen = torch.arange(lo)
        held = seen[seen % HOLDOUT == HOLDOUT - 1]
        train = seen[seen % HOLDOUT != HOLDOUT - 1]
        outputs, held_outputs, epochs = [], [], []
        for member in range(opts.ensemble):
            # seeded by the model's name, not its place in a switch list: each model trains alike alone or switched
            torch.manual_seed(self.seed * 1_000_003 + chunk * 101 + zlib.crc32(name.encode()) + member * 7_919)
            key = f"{name}#{member}"
            net = self.nets.get(key) if opts.warm_start else None
            if net is None:
                net = models.build(name, tuple(self.x.shape[1:]), self.classes).to(self.device)
            epochs.append(_fit(net, self.x, y, train, held, opts, self.device, name, lo))
            if opts.warm_start:
                self.nets[key] = net
            outputs.append(_logits(net, self.x[lo:hi], self.device, name, lo))
            if opts.calibrate:
                held_outputs.append(_logits(net, self.x[held], self.device, name, lo))
        logits = _mean_distribution(outputs)
        temperature = None
        if opts.calibrate:  # one temperature for the ensemble's mean, fitted on its held-out predictions
            temperature = _temperature(_mean_distribution(held_outputs), y[held])
            logits = logits / temperature
        return {"probs": probabilities(logits), "epochs": max(epochs), "trained_on": int(train.numel()),
                "temperature": temperature}


def _fit(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, held: torch.Tensor,
         opts: TrainOptions, device: torch.device, name: str, sent: int) -> int:
    """Adam on ``train`` until the held-out loss has not improved for ``patience`` epochs; keeps the best epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr)
    gen = torch.Generator().manual_seed(int(torch.initial_seed()) % (1 << 62))
    best, best_epoch, best_state, bad = _held_loss(net, x, y, held, device, name, sent), 0, None, 0
    for epoch in range(1, opts.max_epochs + 1):
        net.train()
        for idx in train[torch.randperm(train.numel(), generator=gen)].split(opts.batch_size):
            opt.zero_grad(set_to_none=True)
            batch = x[idx] if not opts.augment else shifted(x[idx], opts.augment, gen)
            F.cross_entropy(net(batch.to(device)), y[idx].to(device)).backward()
            opt.step()
        loss = _held_loss(net, x, y, held, device, name, sent)
        if loss < best:
            best, best_epoch, best_state, bad = loss, epoch, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            if bad >= opts.patience:
                break
            if opts.anneal:  # back to the best epoch, smaller steps
                if best_state is not None:
                    net.load_state_dict(best_state)
                for group in opt.param_groups:
                    group["lr"] /= 3
    if best_state is not None:
        net.load_state_dict(best_state)
    return best_epoch


def shifted(images: torch.Tensor, most: int, gen: torch.Generator) -> torch.Tensor:
    """Each image of a batch [B, C, H, W] moved by its own random (dy, dx) in [-most, most] pixels; the
    uncovered border repeats the edge pixels (the background, whatever the normalisation)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (most, most, most, most), mode="replicate")
    dy, dx = torch.randint(0, 2 * most + 1, (2, b, 1), generator=gen)
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def _held_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor, device: torch.device,
               name: str, sent: int) -> float:
    return float(F.cross_entropy(_logits(net, x[held], device, name, sent), y[held]))


def _mean_distribution(logits: list[torch.Tensor]) -> torch.Tensor:
    """One network's logits as they are; several networks' mean distribution as log-probabilities (float64)."""
    if len(logits) == 1:
        return logits[0]
    logp = torch.stack([torch.log_softmax(z.double(), 1) for z in logits])
    return torch.logsumexp(logp, 0) - math.log(len(logits))


def _logits(net: torch.nn.Module, x: torch.Tensor, device: torch.device, name: str, sent: int) -> torch.Tensor:
    out = batched_logits(net, x, device).float()
    if not torch.isfinite(out).all():
        raise PrequentialError(f"model '{name}' gave non-finite outputs after training on {sent:,} labels")
    return out


def _temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The softmax temperature minimising the held-out cross-entropy, searched in [0.5, 10].

    Held-out sets are small early on; with every held-out label right, the
    loss keeps falling as T -> 0, and so sharpening is bounded."""
    from scipy.optimize import minimize_scalar

    z, t = logits.double(), labels

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), t))

    return float(math.exp(minimize_scalar(nll, bounds=(math.log(0.5), math.log(10.0)), method="bounded",
                                          options={"xatol": 1e-4}).x))


__all__ = ["prequential", "decode", "PrequentialResult", "Chunk", "default_chunks", "check_chunks", "labels_in_order",
           "shifted"]
