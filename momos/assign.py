"""Exact nearest-motif assignment (squared Euclidean), memory-bounded.

Two exact methods give the same assignments up to ties:

* ``brute``: chunked ||b||^2 - 2 b.m + ||m||^2 and argmin on the blocks'
  device (the official implementation's approach; best on GPU and for large s);
* ``kdtree``: scipy's cKDTree on the CPU (much faster for small s).
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import MoMosError

METHODS = ("auto", "brute", "kdtree")
#: largest block size for which "auto" picks the k-d tree on CPU
KDTREE_MAX_S = 8


def nearest(blocks: torch.Tensor, motifs: torch.Tensor, memory_mb: float = 256.0, method: str = "auto") -> torch.Tensor:
    """Index of the nearest motif for every block: (M,) int64 on the blocks' device."""
    if method not in METHODS:
        raise MoMosError(f"unknown assignment method '{method}'; allowed: {', '.join(METHODS)}")
    if memory_mb <= 0:
        raise MoMosError(f"memory_mb must be positive, got {memory_mb}")
    if method == "auto":
        method = "kdtree" if blocks.device.type == "cpu" and blocks.shape[1] <= KDTREE_MAX_S else "brute"
    if method == "kdtree":
        return _kdtree(blocks, motifs)
    return _brute(blocks, motifs, memory_mb)


def _kdtree(blocks: torch.Tensor, motifs: torch.Tensor) -> torch.Tensor:
    from scipy.spatial import cKDTree

    tree = cKDTree(motifs.detach().cpu().double().numpy(), balanced_tree=False, compact_nodes=False)
    _, idx = tree.query(blocks.detach().cpu().double().numpy(), k=1, workers=-1)
    return torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(blocks.device)


def _brute(blocks: torch.Tensor, motifs: torch.Tensor, memory_mb: float) -> torch.Tensor:
    """Chunked exact argmin; the chunk's distance matrix stays within ``memory_mb``."""
    m = motifs.to(blocks.dtype)
    m_sq = (m * m).sum(1)
    k = m.shape[0]
    # distance chunk (rows x k floats) plus the matmul's output of the same size
    rows = max(1, int(memory_mb * 2**20 // (2 * k * blocks.element_size())))
    out = torch.empty(blocks.shape[0], dtype=torch.int64, device=blocks.device)
    mt = m.t().contiguous()
    for lo in range(0, blocks.shape[0], rows):
        b = blocks[lo:lo + rows]
        d = torch.addmm(m_sq.unsqueeze(0), b, mt, beta=1.0, alpha=-2.0)
        out[lo:lo + rows] = d.argmin(1)
    return out
