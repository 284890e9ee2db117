"""MoMos points for kcomplexity's rate–distortion curve (entry point ``kcomplexity.rd_points: momos``).

A copy of the weights is projected onto a mosaic at each capacity; a point's
bits are the length of the mosaic's real code (``kc.mdl(mosaic).coded_bits``)
and its distortion that of the projection, so mosaics and scalar
quantisation sit on one plot.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import kcomplexity as kc
from kcomplexity.checks import seed as check_seed
from kcomplexity.distortion import summary
from kcomplexity.sources import NamedArray

from .errors import MoMosError
from .projection import project


def momos_points(arrays: Sequence[NamedArray], s: int = 2, capacity: Any = (0.01, 0.05, 0.2), seed: int = 0,
                 force_zero: bool = True, **unknown: Any) -> list[dict[str, Any]]:
    """One point per capacity: {code, setting, bits, mse, max_abs_err, snr_db} (bits of the mosaic's code).

    Only floating-point tensors are projected (as MoMos does in training);
    integer buffers such as position ids are left out of these points.
    """
    if unknown:
        raise MoMosError(f"unknown MoMos rd setting(s) {', '.join(sorted(unknown))}; allowed: s, capacity, seed, "
                         "force_zero")
    check_seed(seed, MoMosError)
    capacities = [capacity] if isinstance(capacity, (int, float)) else list(capacity)
    if not capacities:
        raise MoMosError("MoMos rate–distortion points need at least one capacity")
    originals = {a.name: torch.from_numpy(np.array(a.values(), dtype=np.float32)) for a in arrays
                 if a.dtype == "bfloat16" or a.data.dtype.kind == "f"}
    if not originals:
        raise MoMosError("MoMos rate–distortion points need floating-point tensors")
    signal = math.fsum(float(t.double().square().sum()) for t in originals.values())
    n = sum(t.numel() for t in originals.values())
    points = []
    for cap in capacities:
        weights = {k: v.clone() for k, v in originals.items()}
        proj = project(weights, s, capacity=cap, force_zero=force_zero,
                       generator=torch.Generator().manual_seed(int(seed)))
        err = max(float((weights[k] - originals[k]).abs().max()) for k in weights)
        points.append({"code": f"momos s={proj.mosaic.s}", "setting": f"capacity={cap:g}",
                       "bits": float(kc.mdl(proj.mosaic).coded_bits), **summary(proj.distortion, n, err, signal),
                       "k": proj.k})
    return points
