"""The result of a prequential code: per-chunk figures, the code itself, its length in bits, table and plot."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Chunk:
    """One chunk of the code: labels [start, end) coded with a model trained on [0, start)."""

    start: int
    end: int
    trained_on: int          #: examples the model was fitted on (the rest of [0, start) chose the epoch)
    epochs: int              #: epochs of the kept (best held-out loss) model, the most of an ensemble's; 0: uniform
    bits: float              #: -log2 p of the chunk's labels, plus the switch index when switching
    model: str               #: the model that coded it ("uniform" for the first chunk)
    temperature: float | None = None  #: softmax temperature fitted with calibrate (on an ensemble's mean)

    @property
    def n(self) -> int:
        return self.end - self.start

    @property
    def bits_per_label(self) -> float:
        return self.bits / self.n


@dataclass
class PrequentialResult:
    """A prequential code: per-chunk figures, the code itself and its length (bits)."""

    data: str
    models: list[str]
    classes: int
    chunks: list[Chunk]
    code: bytes = field(repr=False)
    options: dict[str, Any]
    seconds: float

    @property
    def n(self) -> int:
        return self.chunks[-1].end

    @property
    def total_bits(self) -> int:
        """Length of the real code, in bits: the side-information header and the labels' ANS stream."""
        return 8 * len(self.code)

    @property
    def header_bits(self) -> int:
        """Of ``total_bits``: the header naming data set, models, seed, chunks and options."""
        from .header import decode

        return 8 * decode(self.code)[1]

    @property
    def stream_bits(self) -> int:
        """Of ``total_bits``: the labels' ANS stream (whole 32-bit words)."""
        return self.total_bits - self.header_bits

    @property
    def ideal_bits(self) -> float:
        """Sum of -log2 p over all labels (and switch indices): what an ideal coder would spend."""
        return float(sum(c.bits for c in self.chunks))

    @property
    def uniform_bits(self) -> float:
        """The labels coded uniformly: n log2 C."""
        return self.n * math.log2(self.classes)

    @property
    def ratio(self) -> float:
        """total_bits / uniform_bits."""
        return self.total_bits / self.uniform_bits

    def to_frame(self) -> Any:
        """One row per chunk, with the cumulative bits."""
        import pandas as pd

        rows = [{**asdict(c), "labels": c.n, "bits_per_label": c.bits_per_label} for c in self.chunks]
        frame = pd.DataFrame(rows)
        frame["cumulative_bits"] = frame["bits"].cumsum()
        return frame

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "models": self.models, "classes": self.classes, "n": self.n,
                "total_bits": self.total_bits, "header_bits": self.header_bits, "stream_bits": self.stream_bits,
                "ideal_bits": self.ideal_bits, "uniform_bits": self.uniform_bits,
                "ratio": self.ratio, "options": self.options, "seconds": self.seconds,
                "chunks": [{**asdict(c), "bits_per_label": c.bits_per_label} for c in self.chunks]}

    def to_csv(self) -> str:
        return self.to_frame().to_csv(index=False)

    def table(self) -> str:
        """Human-readable per-chunk table and totals."""
        frame = self.to_frame()
        cols = ["start", "end", "trained_on", "epochs", "model", "temperature", "bits", "bits_per_label"]
        text = frame[cols].to_string(index=False, float_format=lambda v: f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}")
        return (f"{text}\n\nprequential code: {self.total_bits:,} bits ({self.header_bits} of side information; "
                f"labels: ideal {self.ideal_bits:,.1f}) for "
                f"{self.n:,} labels; uniform code {self.uniform_bits:,.0f} bits; ratio {self.ratio:.4f}")

    def plot(self, path: str | Path) -> Path:
        """Cumulative bits against labels sent, beside the uniform code (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from kcomplexity.rd import save_figure

        ends = [0] + [c.end for c in self.chunks]
        cum = np.concatenate([[0.0], np.cumsum([c.bits for c in self.chunks])])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ends, cum, marker="o", label=f"prequential ({'+'.join(self.models)})")
        ax.plot([0, self.n], [0, self.uniform_bits], linestyle="--", color="grey", label="uniform")
        ax.set_xlabel("labels sent")
        ax.set_ylabel("cumulative bits")
        ax.set_title(f"{self.data}: {self.total_bits:,} bits for {self.n:,} labels")
        ax.legend()
        fig.tight_layout()
        return save_figure(fig, path)
