"""MoMos projection at the paper's MLP size: exact k-d tree vs chunked brute force (the official approach).

Run by hand: ``python benchmarks/bench_projection.py [--sizes 2,4,8,16]``.
The MLP 3072-256-256-256-256-10 has 986,634 parameters; capacity 0.05.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from momos.assign import nearest  # noqa: E402
from momos.projection import _blocks  # noqa: E402


def paper_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    widths = [3072, 256, 256, 256, 256, 10]
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,4,8,16")
    ap.add_argument("--capacity", type=float, default=0.05)
    ap.add_argument("--memory-mb", type=float, default=256.0)
    args = ap.parse_args()
    model = paper_mlp()
    n = sum(p.numel() for p in model.parameters())
    print(f"paper MLP: {n:,} parameters, capacity {args.capacity}, {torch.get_num_threads()} torch threads")
    for s in [int(x) for x in args.sizes.split(",")]:
        blocks = _blocks(list(model.named_parameters()), s).detach()
        m = blocks.shape[0]
        k = max(1, int(args.capacity * m))
        g = torch.Generator().manual_seed(0)
        motifs = torch.cat([blocks.new_zeros(1, s), blocks[torch.randperm(m, generator=g)[: k - 1]]])
        t = time.perf_counter()
        tree = nearest(blocks, motifs, method="kdtree")
        t_tree = time.perf_counter() - t
        t = time.perf_counter()
        brute = nearest(blocks, motifs, method="brute", memory_mb=args.memory_mb)
        t_brute = time.perf_counter() - t
        same = (tree == brute).float().mean().item()
        d_tree = ((blocks - motifs[tree]) ** 2).sum().item()
        d_brute = ((blocks - motifs[brute]) ** 2).sum().item()
        print(f"s={s:2d}: {m:,} blocks x {k:,} motifs  brute {t_brute:7.2f} s  kdtree {t_tree:6.2f} s  "
              f"speed-up {t_brute / t_tree:6.1f}x  same assignment {100 * same:.3f}%  "
              f"distortion kdtree/brute {d_tree / d_brute:.9f}")


if __name__ == "__main__":
    main()
