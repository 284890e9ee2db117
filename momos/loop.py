"""The optimisation loop of a run: optimiser, learning-rate schedule, shuffling and one epoch of training."""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data
from .config import TrainConfig
from .precision import Precision

#: the share of the free device memory a training set may take to be held on the device (indexed and augmented
#: there); a larger one stays in pinned host memory and each batch is copied without blocking
RESIDENT_SHARE = 0.5
#: batches between progress-bar updates: each update waits for the device
BAR_EVERY = 20


class Loop:
    """Trains ``model`` one epoch at a time (through DDP when several ranks share the work).

    ``augment(x, generator)`` transforms each training batch on the device, its draws from a generator seeded
    with the run's seed; ``precision`` is fp32, bf16 or fp16 (autocast, with a gradient scaler for fp16).
    """

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, train: data.Split, device: torch.device,
                 ranks: Any, quiet: bool, augment: Any = None) -> None:
        self.cfg, self.model, self.device, self.ranks, self.quiet = cfg, model, device, ranks, quiet
        self.x, self.y, self.resident = _place(train, device)
        self.n = len(train)
        self.augment = augment
        # batches are augmented once on the device, so the draws come from a generator there
        self.augment_rng = torch.Generator(device=device).manual_seed(cfg.seed) if augment is not None else None
        self.precision = Precision(cfg.precision, device)
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
        out = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
               "rng_torch": torch.get_rng_state(), "rng_shuffle": self.shuffle.get_state(), **self.precision.state()}
        if self.augment_rng is not None:
            out["rng_augment"] = self.augment_rng.get_state()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        self.precision.load_state(state)
        if self.augment_rng is not None:
            self.augment_rng.set_state(state["rng_augment"])

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, c.beta2))

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch of training: (mean cross-entropy in nats, accuracy) over the examples seen."""
        self.model.train()
        batches = self.batches()
        # sums on the device, in float64 as a Python float would add them: one wait for the device per bar update
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=self.quiet, file=sys.stderr)
        for step, idx in enumerate(bar):
            if self.ranks.world > 1 and len(idx) >= self.ranks.world:
                idx = idx[self.ranks.rank::self.ranks.world]  # this rank's share of the global batch
            xb, yb = self.batch(idx)
            self.opt.zero_grad(set_to_none=True)
            with self.precision.autocast():
                out = self.net(xb)
                loss = F.cross_entropy(out, yb)
            self.precision.step(loss, self.opt)
            total_loss += loss.detach().double() * len(idx)
            correct += (out.argmax(1) == yb).sum()
            seen += len(idx)
            if not self.quiet and step % BAR_EVERY == 0:
                bar.set_postfix(loss=f"{float(total_loss) / seen:.4f}", acc=f"{int(correct) / seen:.3f}")
        self.sched.step()
        total, right, seen = self.ranks.sum([float(total_loss), int(correct), seen])
        return total / seen, right / seen

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples ``idx`` on the device, augmented when the run augments."""
        if self.device.type == "cuda" and not self.resident:  # gathered into pinned memory, copied without blocking
            xb = torch.index_select(self.x, 0, idx).pin_memory().to(self.device, non_blocking=True)
            yb = torch.index_select(self.y, 0, idx).pin_memory().to(self.device, non_blocking=True)
        else:  # indexed where the data is (a resident set on the device), then moved (a no-op there)
            idx = idx.to(self.x.device)
            xb, yb = self.x[idx].to(self.device), self.y[idx].to(self.device)
        if self.augment is not None:
            xb = self.augment(xb, self.augment_rng)
        return xb, yb

    def batches(self) -> list[torch.Tensor]:
        """This epoch's index batches: one shuffled pass, or ``steps_per_epoch`` batches drawn from
        as many fresh shuffles as they need (a batch as large as the data set is full-batch training)."""
        n, bs, steps = self.n, self.cfg.batch_size, self.cfg.steps_per_epoch
        if steps is None:
            return list(torch.randperm(n, generator=self.shuffle).split(bs))
        bs = min(bs, n)
        per_pass = n // bs
        order = torch.cat([torch.randperm(n, generator=self.shuffle)[: per_pass * bs]
                           for _ in range(-(-steps // per_pass))])
        return list(order.split(bs)[:steps])


def _place(split: data.Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(x, y, resident): the training set on a CUDA device when it fits in RESIDENT_SHARE of its free memory,
    else in pinned host memory there; on a CPU as it is."""
    if device.type != "cuda":
        return split.x, split.y, False
    free, _ = torch.cuda.mem_get_info(device)
    if split.x.nbytes + split.y.nbytes <= RESIDENT_SHARE * free:
        return split.x.to(device), split.y.to(device), True
    return split.x.pin_memory(), split.y.pin_memory(), False


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
