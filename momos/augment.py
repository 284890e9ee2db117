"""Training-time augmentation, drawn on the device from the run's own generator.

``flip-crop`` is the official CIFAR-10 training transform (src/datasets.py):
``RandomHorizontalFlip()`` then ``RandomCrop(size, padding=4)``, whose padding
is black. The data here is already normalised, so the padding is the value a
black pixel became (:attr:`momos.data.DataSet.black`): flipping and padding
commute with a per-channel normalisation, and the images are the same as the
official pipeline's.

Every draw comes from one generator seeded with the run's seed and kept in the
checkpoint, so a resumed run draws the same flips and crops.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import MoMosError

#: pixels of padding on each side before the crop (the official RandomCrop's padding)
PAD = 4


class FlipCrop:
    """A random horizontal flip (p = 1/2), then a random crop of the image's own size from ``pad`` pixels of
    padding filled with ``fill`` (one value per channel)."""

    def __init__(self, fill: tuple[float, ...], pad: int = PAD) -> None:
        self.fill, self.pad = tuple(fill), int(pad)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flip (n,) bool, top (n,), left (n,)) for ``n`` images, on the generator's device."""
        device = generator.device
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=generator, device=device)
        return flip, offsets[0], offsets[1]

    def apply(self, x: torch.Tensor, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Images ``x`` (B, C, H, W) flipped where ``flip``, then cropped at (``top``, ``left``) of the padded image."""
        b, c, h, w = x.shape
        p = self.pad
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        padded = fill.expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        rows = (top.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
        cols = (left.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
        return padded[torch.arange(b, device=x.device).view(b, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
                      rows, cols]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, *self.draw(len(x), generator))


#: name -> how to build the augmentation from a data set's black value per channel (None: no augmentation);
#: adding an augmentation is one entry here
AUGMENTATIONS: dict[str, Callable[[tuple[float, ...]], Callable[[torch.Tensor, torch.Generator], torch.Tensor]] | None] = {
    "none": None,
    "flip-crop": FlipCrop,
}


def check(name: str, data: str = "", tokens: bool = False) -> None:
    """MoMosError unless ``name`` is a known augmentation that applies to the inputs (``tokens``: the data set
    ``data`` gives integer tokens, not images)."""
    if name not in AUGMENTATIONS:
        raise MoMosError(f"unknown augment '{name}'; available: {', '.join(AUGMENTATIONS)}")
    if tokens and AUGMENTATIONS[name] is not None:
        raise MoMosError(f"--augment {name} needs image inputs; {data or 'this data set'} gives tokens "
                         "(use --augment none)")


def build(name: str, dataset: object) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """The augmentation ``name`` for ``dataset`` (a :class:`momos.data.DataSet`), or None for ``none``;
    MoMosError for a data set whose inputs are not images."""
    check(name, getattr(dataset, "name", ""),
          tokens=getattr(dataset, "tokens", False) or len(getattr(dataset, "input_shape", ())) != 3)
    make = AUGMENTATIONS[name]
    return None if make is None else make(dataset.black)


__all__ = ["FlipCrop", "AUGMENTATIONS", "PAD", "build", "check"]
