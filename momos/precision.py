"""Mixed-precision training: autocast for the forward pass, a gradient scaler for fp16.

The parameters stay float32 in every precision (autocast casts inside the
operations), so the projection, the checkpoints and every estimator see
float32 weights.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .errors import MoMosError

#: precision -> autocast dtype (None: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str, device: str) -> None:
    """MoMosError unless ``precision`` trains on ``device``: fp16 needs CUDA (its scaler and kernels)."""
    if precision not in PRECISIONS:
        raise MoMosError(f"unknown precision '{precision}'; available: {', '.join(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise MoMosError(f"--precision fp16 needs a CUDA device (got {device}); on a CPU use --precision bf16 or fp32")


class Precision:
    """``autocast()`` around forward passes and ``scaler`` for the backward pass (a no-op unless fp16)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        check(precision, str(device))
        self.dtype, self.device_type = PRECISIONS[precision], device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward pass and optimiser step, through the scaler when fp16 (which skips steps with inf gradients)."""
        if not self.scaler.is_enabled():
            loss.backward()
            opt.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        self.scaler.update()

    def state(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}

    def load_state(self, state: dict[str, Any]) -> None:
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


__all__ = ["PRECISIONS", "Precision", "check"]
