"""The Mosaic a MoMos projection produces: a motif table and one motif index per block."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kcomplexity.estimators.mdl import decode as decode_values, mdl
from kcomplexity.errors import CorruptFileError, SourceNotFoundError

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


@dataclass
class Mosaic:
    """Weights as motifs: ``motifs`` (k x s), ``index`` (m,) and the layout of the tensors.

    Every tensor was flattened and zero-padded to a multiple of s on its own;
    its blocks follow each other in ``names`` order. ``reconstruct()``
    returns exactly the projected tensors.
    """

    motifs: torch.Tensor         # (k, s), on CPU
    index: torch.Tensor          # (m,) int64, on CPU
    s: int
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]

    @property
    def k(self) -> int:
        return int(self.motifs.shape[0])

    @property
    def m(self) -> int:
        return int(self.index.numel())

    @property
    def sizes(self) -> list[int]:
        """Real (unpadded) element count of each tensor."""
        return [int(np.prod(sh, dtype=np.int64)) for sh in self.shapes]

    @property
    def n(self) -> int:
        return int(sum(self.sizes))

    def counts(self) -> np.ndarray:
        """How many blocks use each motif (length k, sums to m)."""
        return np.bincount(self.index.numpy(), minlength=self.k)

    def reconstruct(self) -> dict[str, torch.Tensor]:
        """The projected tensors, by name, in their shapes and dtypes."""
        flat = self.motifs[self.index].reshape(-1)
        out, pos = {}, 0
        for name, shape, dtype, size in zip(self.names, self.shapes, self.dtypes, self.sizes):
            out[name] = flat[pos:pos + size].to(_DTYPES[dtype]).reshape(shape)
            pos += -(-size // self.s) * self.s
        return out

    def encode(self) -> bytes:
        """Lossless code of the weights (see :mod:`kcomplexity.codecs.mosaic`); its length is ``mdl(self).coded_bits``."""
        return mdl(self).encode()

    @classmethod
    def decode(cls, data: bytes, like: "Mosaic") -> dict[str, torch.Tensor]:
        """Tensors from :meth:`encode` output; ``like`` supplies the layout (names, shapes, dtypes)."""
        parts = decode_values(data, like.sizes)
        return {name: torch.from_numpy(np.ascontiguousarray(p)).to(_DTYPES[dt]).reshape(sh)
                for name, sh, dt, p in zip(like.names, like.shapes, like.dtypes, parts)}

    def save(self, path: str | Path) -> None:
        """Write to a .safetensors file (motifs, index, and the layout as metadata)."""
        from safetensors.torch import save

        from kcomplexity.fileio import write_atomic

        meta = {"s": str(self.s), "layout": json.dumps({"names": self.names, "shapes": [list(s) for s in self.shapes],
                                                          "dtypes": self.dtypes})}
        write_atomic(path, save({"motifs": self.motifs.contiguous(), "index": self.index.contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "Mosaic":
        """Read a Mosaic written by :meth:`save`."""
        from safetensors import safe_open

        if not Path(path).is_file():
            raise SourceNotFoundError(f"no such file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                motifs, index = f.get_tensor("motifs"), f.get_tensor("index")
            layout = json.loads(meta["layout"])
            return cls(motifs, index, int(meta["s"]), list(layout["names"]),
                       [tuple(s) for s in layout["shapes"]], list(layout["dtypes"]))
        except Exception as exc:  # safetensors, json and missing keys all mean "not a Mosaic file"
            raise CorruptFileError(f"{path}: not a saved Mosaic ({exc})") from None
