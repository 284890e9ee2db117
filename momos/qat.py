"""Quantisation-aware training: per-tensor symmetric fake-quantisation with a straight-through estimator.

Attached once before training with ``torch.nn.utils.parametrize``: the
trainable parameter becomes the latent float ``...parametrizations.<name>.original``
(which MoMos projects), and the module computes with its q-bit quantisation.
Norm layers are left in float, as in the paper.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import MoMosError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class FakeQuant(nn.Module):
    """Symmetric per-tensor quantiser to q bits; gradients pass straight through."""

    def __init__(self, q: int) -> None:
        super().__init__()
        self.q = int(q)
        self.levels = 2 ** (self.q - 1) - 1

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.detach().abs().max().clamp_min(1e-12) / self.levels
        wq = torch.round(w / scale).clamp(-self.levels, self.levels) * scale
        return w + (wq - w).detach()


def is_norm(name: str, module: nn.Module) -> bool:
    """Norm layers stay in float: by type, or by name for custom ones."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return isinstance(module, _NORMS) or "norm" in leaf or leaf.startswith(("bn", "ln"))


def attach(model: nn.Module, q: int, weights_only: bool = True) -> list[str]:
    """Fake-quantise non-norm modules' parameters to q bits; returns their names.

    By default only ``module.weight`` is quantised, as the official MoMos
    code does; ``weights_only=False`` also quantises biases and other direct
    parameters (class tokens, position embeddings).
    """
    if not 2 <= int(q) <= 16:
        raise MoMosError(f"QAT needs q in 2..16 bits, got {q}")
    done = []
    for mod_name, module in list(model.named_modules()):
        if is_norm(mod_name, module):
            continue
        for p_name, p in list(module.named_parameters(recurse=False)):
            if weights_only and p_name != "weight":
                continue
            if p.requires_grad and p.is_floating_point():
                parametrize.register_parametrization(module, p_name, FakeQuant(q))
                done.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    if not done:
        raise MoMosError("QAT found no parameters to quantise")
    return done


def latent_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable latent weights by plain names (``layer.weight``, not ``...parametrizations.weight.original``)."""
    return _by_plain_name(model, effective=False)


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights the model computes with (quantised where QAT is attached), by plain names."""
    return _by_plain_name(model, effective=True)


def _by_plain_name(model: nn.Module, effective: bool) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith(".original") and "parametrizations." in name:
                owner, _, rest = name.rpartition("parametrizations.")
                attr = rest.removesuffix(".original")
                name = owner + attr
                if effective:
                    p = getattr(model.get_submodule(owner.rstrip(".")), attr)
            out[name] = p.detach()
    return out
