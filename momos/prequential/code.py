"""The chunk loop of a prequential code, shared by the encoder (labels known) and the decoder (labels decoded as
it goes), and the chunk boundaries and seeded order of the labels it sends."""
from __future__ import annotations

import math
import sys
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kcomplexity.codecs import labels as label_code

from .. import data as data_mod, models
from ..errors import PrequentialError
from ..evaluation import probabilities
from .fit import _fit, _logits, _mean_distribution, _temperature
from .options import HOLDOUT, TrainOptions
from .result import Chunk


def default_chunks(n: int, first: int = 64) -> list[int]:
    """Boundaries doubling from ``first``: 64, 128, 256, ... below n."""
    out, t = [], first
    while t < n:
        out.append(t)
        t *= 2
    return out


def split_last(n: int, first: int = 64) -> list[int]:
    """:func:`default_chunks` with the last chunk cut in two halves: its second half is then coded by a network
    trained on more labels (the last chunk holds nearly half of them)."""
    bounds = default_chunks(n, first)
    middle = (bounds[-1] + n) // 2 if bounds else 0
    return bounds + [middle] if bounds and middle > bounds[-1] else bounds


def fine_chunks(n: int, first: int = 64) -> list[int]:
    """Boundaries growing by sqrt(2) from ``first`` (64, 91, 128, 181, 256, ...): each label is coded by a network
    trained on at least 71 % of the labels before it, where doubling leaves 50 %. On MNIST's first 8,192
    labels under the best preset's options: 14 % fewer bits than doubling, for 2.2x the time."""
    out, k = [], 0
    while (t := round(first * 2 ** (k / 2))) < n:
        out.append(t)
        k += 1
    return out


def fine_doubling(n: int, first: int = 64) -> list[int]:
    """:func:`fine_chunks` below n/4, then doubling (64, 91, ..., 11,585, 23,170, 46,340 for 60,000): √2
    steps where the networks are small and cheap to train, doubling where training on many labels dominates
    the time (the chunks past n/4 hold three quarters of the labels and cost most of the training)."""
    out = fine_chunks(max(n // 4, first + 1), first)
    if out[-1] >= n:  # fewer labels than the first chunk holds: no boundary, as with the other schedules
        return []
    t = 2 * out[-1]
    while t < n:
        out.append(t)
        t *= 2
    return out


#: named chunk schedules, by the index a code's header writes (only ever appended)
SCHEDULES = (default_chunks, split_last, fine_chunks, fine_doubling)
#: their names (``chunks="fine"``, ``--chunks fine``), in the same order
SCHEDULE_NAMES = ("doubling", "split-last", "fine", "fine-doubling")


def named_chunks(name: str, n: int) -> list[int]:
    """The boundaries of the schedule called ``name`` for ``n`` labels."""
    if name not in SCHEDULE_NAMES:
        raise PrequentialError(f"unknown chunk schedule '{name}'; available: {', '.join(SCHEDULE_NAMES)}, "
                               "or a list of boundaries")
    return SCHEDULES[SCHEDULE_NAMES.index(name)](n)


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
