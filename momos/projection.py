"""One MoMos projection step: every weight block replaced by its nearest of k sampled motifs.

The paper's algorithm (``scope="global"``): take every trainable parameter,
flatten it and zero-pad it to a multiple of s on its own, concatenate all
blocks; k = max(1, floor(capacity * blocks)) clamped to the number of blocks;
motifs = the zero block plus k-1 blocks sampled uniformly without
replacement (or k sampled blocks without ``force_zero``), re-sampled every
call; each block is overwritten with its nearest motif (exact argmin of the
squared Euclidean distance). ``scope="tensor"`` does the same per tensor.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kcomplexity.errors import NonFiniteError

from .assign import METHODS, nearest
from .errors import MoMosError
from .mosaic import Mosaic

SCOPES = ("global", "tensor")
DEFAULT_MEMORY_MB = 256.0


@dataclass
class Projection:
    """What one projection did."""

    k: int                 #: motifs used (after clamping)
    k_requested: int       #: motifs asked for (capacity * blocks, or k)
    clamped: bool          #: k_requested exceeded the number of blocks
    distortion: float      #: sum of squared changes over real (unpadded) entries
    changed: int           #: number of weights whose value changed
    counts: np.ndarray = field(repr=False)  #: blocks assigned to each motif (sums to m)
    mosaic: Mosaic = field(repr=False)

    @property
    def m(self) -> int:
        return self.mosaic.m

    def stats(self) -> dict[str, Any]:
        """JSON-ready figures for a training log."""
        return {"k": self.k, "k_requested": self.k_requested, "clamped": self.clamped, "m": self.m,
                "distortion": self.distortion, "changed": self.changed, **_usage(self.counts)}


def _usage(counts: np.ndarray) -> dict[str, Any]:
    c = np.sort(counts)[::-1]
    m = max(int(c.sum()), 1)
    return {"motifs_used": int(np.count_nonzero(c)), "top_motif_share": float(c[0] / m),
            "least_used_half_share": float(c[c.size // 2:].sum() / m)}


def check_settings(s: Any, capacity: Any, k: Any, scope: str = "global") -> tuple[int, float | None, int | None]:
    """Validate MoMos settings; returns (s, capacity, k). Exactly one of capacity and k."""
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
        raise MoMosError(f"block size s must be a positive integer, got {s!r}")
    if (capacity is None) == (k is None):
        raise MoMosError("give exactly one of capacity (a fraction of blocks in (0, 1]) or k (a number of motifs)")
    if capacity is not None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, float, np.integer, np.floating)):
            raise MoMosError(f"capacity must be a number in (0, 1], got {capacity!r}")
        capacity = float(capacity)
        if not (0.0 < capacity <= 1.0) or math.isnan(capacity):
            raise MoMosError(f"capacity must lie in (0, 1], got {capacity}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise MoMosError(f"k must be an integer >= 1, got {k!r}")
    if scope not in SCOPES:
        raise MoMosError(f"unknown scope '{scope}'; allowed: {', '.join(SCOPES)}")
    return int(s), capacity, (int(k) if k is not None else None)


def check_fits(s: int, sizes: list[int]) -> None:
    """MoMosError unless block size ``s`` fits the largest of the parameters of these sizes."""
    largest = max(sizes, default=0)
    if largest == 0:
        raise MoMosError("nothing to project: every parameter is empty")
    if s > largest:  # every block would be mostly padding; the padded copy could exhaust memory
        raise MoMosError(f"block size s={s} exceeds the largest tensor ({largest:,} values); use s <= {largest:,}")


def trainable(model_or_params: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) pairs MoMos acts on: trainable parameters of a module, or given tensors."""
    if isinstance(model_or_params, torch.nn.Module):
        items = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    elif isinstance(model_or_params, Mapping):
        items = [(str(n), p) for n, p in model_or_params.items()]
    elif isinstance(model_or_params, torch.Tensor):
        items = [("tensor", model_or_params)]
    elif isinstance(model_or_params, Iterable):
        items = [(f"param{i}", p) for i, p in enumerate(model_or_params)]
    else:
        raise MoMosError(f"cannot project a {type(model_or_params).__name__}; pass an nn.Module or tensors")
    if not items:
        raise MoMosError("nothing to project: the model has no trainable parameters")
    for name, p in items:
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise MoMosError(f"'{name}' is not a floating-point tensor")
    return items


@torch.no_grad()
def project(
    model_or_params: Any,
    s: int,
    capacity: float | None = None,
    k: int | None = None,
    force_zero: bool = True,
    generator: torch.Generator | None = None,
    scope: str = "global",
    memory_mb: float = DEFAULT_MEMORY_MB,
    method: str = "auto",
) -> Projection:
    """Project the weights in place onto a mosaic of k motifs of s values; returns what changed.

    ``generator`` (a CPU ``torch.Generator``) makes motif sampling
    deterministic; ``memory_mb`` bounds the distance matrix of the brute-force
    assignment; ``method`` is ``auto``, ``brute`` or ``kdtree`` (same result
    up to ties).
    """
    s, capacity, k = check_settings(s, capacity, k, scope)
    if method not in METHODS:
        raise MoMosError(f"unknown assignment method '{method}'; allowed: {', '.join(METHODS)}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, (int, float)) or not 0 < memory_mb < math.inf:
        raise MoMosError(f"memory_mb must be a finite number > 0, got {memory_mb!r}")
    items = trainable(model_or_params)
    if any(p.device.type == "meta" for _, p in items):
        raise MoMosError("the model is on the meta device and holds no values to project")
    check_fits(s, [p.numel() for _, p in items])
    for name, p in items:
        if not torch.isfinite(p).all():
            raise NonFiniteError(f"parameter '{name}' holds NaN/Inf; MoMos cannot project it")
    groups = [items] if scope == "global" else [[it] for it in items]
    parts = [_project_group(g, s, capacity, k, force_zero, generator, memory_mb, method) for g in groups]
    return _merge(parts, items, s)


def _blocks(items: list[tuple[str, torch.Tensor]], s: int) -> torch.Tensor:
    device = items[0][1].device
    rows = []
    for _, p in items:
        flat = p.detach().reshape(-1).to(device=device, dtype=torch.float32)
        pad = (-flat.numel()) % s
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        rows.append(flat.view(-1, s))
    return torch.cat(rows)


def _project_group(items, s, capacity, k, force_zero, generator, memory_mb, method) -> dict[str, Any]:
    blocks = _blocks(items, s)
    total = blocks.shape[0]
    requested = max(1, math.floor(capacity * total)) if capacity is not None else k
    kk = min(requested, total)
    n_sampled = kk - 1 if force_zero else kk
    pick = torch.randperm(total, generator=generator)[:n_sampled].to(blocks.device)
    motifs = blocks[pick]
    if force_zero:
        motifs = torch.cat([blocks.new_zeros(1, s), motifs])
    assign = nearest(blocks, motifs, memory_mb, method)
    new = motifs[assign].reshape(-1)
    distortion, changed, pos = 0.0, 0, 0
    for _, p in items:
        size = p.numel()
        vals = new[pos:pos + size].to(device=p.device, dtype=p.dtype)
        old = p.detach().reshape(-1)
        diff = vals.double() - old.double()
        distortion += float((diff * diff).sum())
        changed += int((vals != old).sum())
        p.copy_(vals.view_as(p))
        pos += -(-size // s) * s
    return {"motifs": motifs.cpu(), "assign": assign.cpu(), "k": kk, "requested": requested,
            "distortion": distortion, "changed": changed}


def _merge(parts: list[dict[str, Any]], items: list[tuple[str, torch.Tensor]], s: int) -> Projection:
    offsets = np.cumsum([0] + [p["motifs"].shape[0] for p in parts[:-1]])
    index = torch.cat([p["assign"] + int(off) for p, off in zip(parts, offsets)])
    motifs = torch.cat([p["motifs"] for p in parts])
    dtypes = {p.dtype for _, p in items}
    # motifs are sampled weights (or zero), so they are exact in the weights' own dtype
    if len(dtypes) == 1:
        motifs = motifs.to(dtypes.pop())
    mosaic = Mosaic(motifs=motifs, index=index, s=s, names=[n for n, _ in items],
                    shapes=[tuple(p.shape) for _, p in items],
                    dtypes=[str(p.dtype).removeprefix("torch.") for _, p in items])
    k = sum(p["k"] for p in parts)
    requested = sum(p["requested"] for p in parts)
    return Projection(k=k, k_requested=requested, clamped=requested > k,
                      distortion=sum(p["distortion"] for p in parts), changed=sum(p["changed"] for p in parts),
                      counts=np.bincount(index.numpy(), minlength=motifs.shape[0]), mosaic=mosaic)


class MoMos:
    """Stateful projector for a training loop: call it on the model once per epoch.

    Holds its own seeded generator, so a run is reproducible; its
    ``state_dict()`` lets a resumed run continue the same motif draws.
    """

    def __init__(self, s: int, capacity: float | None = None, k: int | None = None, force_zero: bool = True,
                 seed: int = 0, scope: str = "global", memory_mb: float = DEFAULT_MEMORY_MB,
                 method: str = "auto") -> None:
        self.s, self.capacity, self.k = check_settings(s, capacity, k, scope)
        self.force_zero, self.scope, self.memory_mb, self.method = bool(force_zero), scope, float(memory_mb), method
        self.generator = torch.Generator().manual_seed(int(seed))
        self.last: Projection | None = None

    def __call__(self, model: Any) -> Projection:
        self.last = project(model, self.s, self.capacity, self.k, self.force_zero, self.generator, self.scope,
                            self.memory_mb, self.method)
        return self.last

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
