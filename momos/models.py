"""The paper's models, sized by the data set: MLP, CIFAR-style ResNet-20, a small ViT; a small CNN."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import MoMosError

@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: how to build the model, its training profile, and the inputs it takes."""

    build: Callable[[tuple[int, ...], int, int | None], nn.Module]  #: (input shape, classes, width or None)
    profile: dict[str, Any]   #: optimizer, lr, weight_decay, momentum (and any other TrainConfig default)
    tokens: bool = False      #: takes integer token inputs (modadd) rather than images


#: name -> ModelSpec; adding a model is one :func:`register_model` call
MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, build: Callable[[tuple[int, ...], int, int | None], nn.Module],
                   profile: dict[str, Any], tokens: bool = False) -> None:
    """Make ``name`` usable as ``TrainConfig(model=name)`` / ``momos train --model name``."""
    if name in MODELS:
        raise MoMosError(f"model '{name}' is already registered")
    MODELS[name] = ModelSpec(build, dict(profile), tokens)


def build(name: str, input_shape: tuple[int, ...], num_classes: int, width: int | None = None,
          tokens: bool = False) -> nn.Module:
    """A model for inputs of ``input_shape`` ((C, H, W) images, or (L,) tokens); ``width`` overrides the default width."""
    if name not in MODELS:
        raise MoMosError(f"unknown model '{name}'; available: {', '.join(MODELS)}")
    spec = MODELS[name]
    if spec.tokens != tokens:
        raise MoMosError(f"{name} takes token inputs (--data modadd)" if spec.tokens else
                         f"{name} takes images, and this data set gives token inputs (use grok-mlp)")
    return spec.build(tuple(input_shape), num_classes, width)


class MLP(nn.Module):
    """The paper's MLP: input - 4 hidden layers of ``width`` with ReLU - classes (3072-256x4-10 on CIFAR-10)."""

    def __init__(self, inputs: int, num_classes: int, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        dims = [inputs] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class CNN(nn.Module):
    """A small CNN: two 3x3 convolutions (32, 64 channels, no padding), 2x2 max-pooling, 128 hidden units, dropout."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 128,
                 dropout: float = 0.3) -> None:
        super().__init__()
        c, h, w = input_shape
        if h < 6 or w < 6:
            raise MoMosError(f"cnn needs images of at least 6x6 pixels, got {h}x{w}")
        self.conv1 = nn.Conv2d(c, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.hidden = nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.head(self.drop(F.relu(self.hidden(x.flatten(1)))))


class GrokMLP(nn.Module):
    """Embeddings + one hidden layer for modular arithmetic: tokens (N, L) -> embed 128 each -> concat -> ``width`` -> p."""

    def __init__(self, vocab: int, length: int = 2, width: int = 512, dim: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(length * dim, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.hidden(self.embed(x).flatten(1))))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # option A: subsample and zero-pad the channels, no parameters
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, option A shortcuts."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(3):
                blocks.append(_Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ViT(nn.Module):
    """A small Vision Transformer: patch embedding, 4 pre-norm encoder layers, class token."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 64, depth: int = 4,
                 heads: int = 4) -> None:
        super().__init__()
        c, h, w = input_shape
        self.patch = next(p for p in (4, 2, 1) if h % p == 0 and w % p == 0 and (h // p) * (w // p) >= 4)
        tokens = (h // self.patch) * (w // self.patch)
        self.embed = nn.Conv2d(c, width, self.patch, self.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


_PAPER_ADAMW = {"optimizer": "adamw", "momentum": 0.0}
register_model("mlp", lambda shape, classes, width: MLP(int(torch.tensor(shape).prod()), classes, width or 256),
               {**_PAPER_ADAMW, "lr": 3e-4, "weight_decay": 1e-2})
register_model("cnn", lambda shape, classes, width: CNN(shape, classes, width or 128),
               {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.0})
register_model("resnet20", lambda shape, classes, width: ResNet20(shape[0], classes, width or 16),
               {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9})
register_model("vit", lambda shape, classes, width: ViT(shape, classes, width or 64),
               {**_PAPER_ADAMW, "lr": 1e-3, "weight_decay": 5e-2})
# grokking modular addition (DeMoss et al. 2024 setup): full batch, AdamW betas (0.9, 0.98), weight decay 1.0,
# constant lr; an epoch is 100 steps, so 60 epochs = 6,000 steps
register_model("grok-mlp", lambda shape, classes, width: GrokMLP(classes, int(shape[0]), width or 512),
               {**_PAPER_ADAMW, "lr": 1e-3, "weight_decay": 1.0, "beta2": 0.98, "epochs": 60, "batch_size": 4096,
                "schedule": "constant", "steps_per_epoch": 100}, tokens=True)
