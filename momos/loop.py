"""The optimisation loop of a run: optimiser, learning-rate schedule, shuffling and one epoch of training."""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data
from .config import TrainConfig


class Loop:
    """Trains ``model`` one epoch at a time (through DDP when several ranks share the work)."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, train: data.Split, device: torch.device,
                 ranks: Any, quiet: bool) -> None:
        self.cfg, self.model, self.train, self.device, self.ranks, self.quiet = cfg, model, train, device, ranks, quiet
        # the module trains through DDP on several ranks; projection, checkpoints and measurement use the module
        self.net = torch.nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else model
        self.opt = self._optimizer([p for p in model.parameters() if p.requires_grad])
        self.sched = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(cfg.epochs, 1))
                      if cfg.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0))
        self.shuffle = torch.Generator().manual_seed(cfg.seed)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state(self) -> dict[str, Any]:
        """What resuming needs to continue the loop exactly: optimiser, schedule and both random streams."""
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_shuffle": self.shuffle.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, c.beta2))

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        x, y = self.train.x, self.train.y
        batches = self.batches()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=self.quiet, file=sys.stderr)
        for idx in bar:
            if self.ranks.world > 1 and len(idx) >= self.ranks.world:
                idx = idx[self.ranks.rank::self.ranks.world]  # this rank's share of the global batch
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            self.opt.zero_grad(set_to_none=True)
            out = self.net(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            self.opt.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        self.sched.step()
        total_loss, correct, seen = self.ranks.sum([total_loss, correct, seen])
        return total_loss / seen, correct / seen

    def batches(self) -> list[torch.Tensor]:
        """This epoch's index batches: one shuffled pass, or ``steps_per_epoch`` batches drawn from
        as many fresh shuffles as they need (a batch as large as the data set is full-batch training)."""
        n, bs, steps = len(self.train), self.cfg.batch_size, self.cfg.steps_per_epoch
        if steps is None:
            return list(torch.randperm(n, generator=self.shuffle).split(bs))
        bs = min(bs, n)
        per_pass = n // bs
        order = torch.cat([torch.randperm(n, generator=self.shuffle)[: per_pass * bs]
                           for _ in range(-(-steps // per_pass))])
        return list(order.split(bs)[:steps])


@torch.no_grad()
def weight_stats(model: torch.nn.Module) -> dict[str, float]:
    """The official run's other per-epoch metrics, over all trainable (latent) weights: the fraction
    of exact zeros and the L2 norm."""
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    zeros = sum(int((p == 0).sum()) for p in params)
    norm = float(torch.sqrt(sum(p.double().square().sum() for p in params)))
    return {"sparsity": zeros / n, "l2_norm": norm}


__all__ = ["Loop", "weight_stats"]
