"""Batched evaluation of a network, the one helper the trainer, the two-part code and prequential share."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from . import data

#: predicted probabilities are floored here (and renormalised): the label coder resolves about 2^-24
PROB_FLOOR = 1e-7
#: examples in the fixed subset ``intrinsic``'s loss is measured on
LOSS_EXAMPLES = 2048


@torch.no_grad()
def outputs(net: torch.nn.Module, x: torch.Tensor, device: str | torch.device, batch: int) -> Iterator[torch.Tensor]:
    """The network's outputs for ``x`` in eval mode, one batch of ``batch`` examples at a time (on ``device``)."""
    net.eval()
    for lo in range(0, len(x), batch):
        yield net(x[lo:lo + batch].to(device))


def batched_logits(net: torch.nn.Module, x: torch.Tensor, device: str | torch.device, batch: int = 2048
                   ) -> torch.Tensor:
    """The network's outputs for ``x`` in eval mode, on the CPU."""
    return torch.cat([out.cpu() for out in outputs(net, x, device, batch)])


@torch.no_grad()
def loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str | torch.device,
                      batch: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` in eval mode."""
    loss, correct = 0.0, 0
    for lo, out in zip(range(0, len(y), batch), outputs(model, x, device, batch)):
        yb = y[lo:lo + batch].to(device)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


def accuracy(net: torch.nn.Module, split: data.Split, device: str | torch.device) -> float:
    """Fraction of ``split`` the network labels right."""
    return float((batched_logits(net, split.x, device).argmax(1) == split.y).double().mean())


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax in float64, floored at PROB_FLOOR and renormalised: rows the label coder can code."""
    probs = np.maximum(torch.softmax(logits.double(), 1).numpy(), PROB_FLOOR)
    return probs / probs.sum(1, keepdims=True)


def fixed_loss(split: data.Split, seed: int, device: str | torch.device) -> Callable[[torch.nn.Module], float]:
    """``loss_fn(model) -> float``: mean cross-entropy (nats) on a fixed seeded subset of at most LOSS_EXAMPLES."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:LOSS_EXAMPLES].sort().values
    x, y = split.x[order], split.y[order]
    return lambda model: loss_and_accuracy(model, x, y, device)[0]


__all__ = ["outputs", "batched_logits", "loss_and_accuracy", "accuracy", "probabilities", "fixed_loss", "PROB_FLOOR"]
