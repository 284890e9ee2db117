"""Fitting one chunk's network on the labels already sent, and its predictions (shared by encoder and decoder)."""
from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from ..errors import PrequentialError
from ..evaluation import batched_logits
from .options import TrainOptions


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
