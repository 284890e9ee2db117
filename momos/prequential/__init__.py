"""Prequential (online) code of a data set's labels, after Blier & Ollivier (NeurIPS 2018).

The labels are sent in chunks [t_0 = 0, t_1), [t_1, t_2), ..., [t_(K-1), N).
The first chunk is coded uniformly (log2 C bits a label). Every later chunk
is coded with the predictions of a network trained only on the labels
already sent; both sides can train it, so the network itself is never
transmitted. The code is real: a header with the side information (data set, models,
seed, chunk boundaries, fitting options: :mod:`.header`, about 20 bytes)
and one ANS stream (:mod:`kcomplexity.codecs.labels`) that :func:`decode`
turns back into the labels by retraining the same networks in the same
order (same seeds, same machine and library versions: training must
repeat bit for bit). Both parts are counted.

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

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from kcomplexity.checks import seed as check_seed
from kcomplexity.codecs import labels as label_code

from .. import models
from ..config import check_device
from ..errors import PrequentialError
from . import header, presets
from .code import (SCHEDULES, _Run, check_chunks, default_chunks, fine_chunks, fine_doubling, labels_in_order,
                   named_chunks, split_last)
from .fit import shifted
from .options import HOLDOUT, MAX_AUGMENT, TrainOptions
from .result import Chunk, PrequentialResult


def prequential(model: str | Sequence[str] | None = None, data: str = "digits",
                chunks: Sequence[int] | str | None = None, seed: int = 0, limit: int | None = None,
                device: str = "cpu", data_dir: str | None = None, quiet: bool = False,
                options: TrainOptions | None = None, preset: str | None = None,
                **option_values: Any) -> PrequentialResult:
    """Prequential code length (bits) of the training labels of ``data`` under ``model``.

    ``model`` may list several registered models: each chunk is then coded
    by whichever is best on it, and its index costs log2 M bits in the code
    (switching). How each chunk's network is fitted is a
    :class:`TrainOptions` (``options``, or its fields as keywords:
    ``calibrate``, ``warm_start``, ``anneal``, ``augment``, ``ensemble``,
    ``max_epochs``, ``patience``, ``lr``, ``batch_size``). ``chunks`` are
    the boundaries t_1 < t_2 < ... or a named schedule (``"doubling"`` from
    64, the default; ``"split-last"``; ``"fine"``, growing by sqrt 2; ``"fine-doubling"``,
    sqrt 2 below a quarter of the labels, then doubling). The labels
    are all of the data set's training data (its train and validation
    splits) in an order drawn from ``seed``; ``limit`` keeps the first
    ``limit`` of them. ``model`` defaults to ``"mlp"``.

    ``preset`` names a configuration of :data:`presets.PRESETS` (``"best"``):
    it sets the models, the chunks and the options, so none of those may be
    given with it.
    """
    chosen = None
    if preset is not None:
        chosen = presets.get(preset)
        if model is not None or chunks is not None or options is not None or option_values:
            raise PrequentialError(f"preset '{preset}' sets the models, chunks and fitting options; give only data, "
                                   "seed, limit, device and data_dir with it")
        model, options = list(chosen.models), chosen.options
    model = "mlp" if model is None else model
    names = [model] if isinstance(model, str) else list(model)
    check_seed(seed, PrequentialError)
    check_device(device)
    opts = _options(names, options, option_values)
    x, y, classes = labels_in_order(data, seed, limit, data_dir)
    if chosen is not None:
        chunks = chosen.schedule
    if isinstance(chunks, str):
        chunks = named_chunks(chunks, len(y))
    bounds = check_chunks(default_chunks(len(y)) if chunks is None else chunks, len(y))
    start = time.perf_counter()
    run = _Run(names, x, classes, bounds, opts, seed, torch.device(device), quiet)
    records, segments = run.encode(y)
    labels = y.numpy()
    if chosen is not None:
        side = header.encode_preset(data, presets.index(preset), seed, limit, labels)
    else:
        named = [i for i, schedule in enumerate(SCHEDULES) if schedule(len(y)) == bounds]
        side = header.encode(data, names, seed, limit, named[0] if named else bounds, opts, labels)
    code = side + label_code.encode_labels(segments)
    recorded = {"chunks": bounds, "seed": seed, "limit": limit, **asdict(opts),
                **({"preset": preset, "preset_tried": chosen.tried} if chosen is not None else {})}
    return PrequentialResult(data, names, classes, records, code, recorded, time.perf_counter() - start)


def decode(result: PrequentialResult | bytes, data_dir: str | None = None, device: str = "cpu",
           quiet: bool = True) -> np.ndarray:
    """The labels, decoded from a code (``result.code``, or its bytes) by retraining the same models chunk by
    chunk.

    Everything but the inputs comes out of the code: its header names the data set, models, seed, chunks and
    options, and only the inputs are read from the data set (in the same seeded order).
    """
    code = result.code if isinstance(result, PrequentialResult) else bytes(result)
    side, pos = header.decode(code)
    x, _, classes = labels_in_order(side["data"], side["seed"], side["limit"], data_dir)
    if side["n"] is not None and side["n"] != len(x):  # before any training: a damaged limit or data set
        raise PrequentialError(f"corrupt prequential code: it holds {side['n']:,} labels, its header's data set "
                               f"and limit give {len(x):,}")
    if "preset" in side:
        chosen = presets.by_index(side["preset"])
        side.update(models=list(chosen.models), options=chosen.options, chunks=chosen.chunks(len(x)))
    chunks = side["chunks"]
    if isinstance(chunks, int):
        if chunks >= len(SCHEDULES):
            raise PrequentialError(f"corrupt prequential code: no chunk schedule {chunks}")
        chunks = SCHEDULES[chunks](len(x))
    bounds = check_chunks(chunks, len(x))
    run = _Run(side["models"], x, classes, bounds, side["options"], side["seed"], torch.device(device), quiet)
    labels = run.decode(label_code.LabelDecoder(code[pos:]))
    if side["crc"] is not None and header.labels_crc(labels) != side["crc"]:
        raise PrequentialError("corrupt prequential code: the decoded labels do not match its checksum (the stream "
                               "is damaged)")
    return labels


def _options(names: list[str], options: TrainOptions | None, values: dict[str, Any]) -> TrainOptions:
    for name in names:
        if name not in models.MODELS:
            raise PrequentialError(f"unknown model '{name}'; available: {', '.join(models.MODELS)}")
    if len(set(names)) != len(names):
        raise PrequentialError(f"each model may be listed once, got {', '.join(names)}")
    unknown = set(values) - set(TrainOptions.__dataclass_fields__)
    if unknown:
        raise PrequentialError(f"unknown option(s) {', '.join(sorted(unknown))}; TrainOptions has "
                               f"{', '.join(TrainOptions.__dataclass_fields__)}")
    if options is not None and values:
        raise PrequentialError("give options either as a TrainOptions or as keywords, not both")
    return options if options is not None else TrainOptions(**values)


__all__ = ["prequential", "decode", "PrequentialResult", "Chunk", "TrainOptions", "default_chunks", "split_last",
           "fine_chunks", "fine_doubling", "check_chunks", "labels_in_order", "shifted", "HOLDOUT", "MAX_AUGMENT"]
