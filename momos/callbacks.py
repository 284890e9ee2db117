"""MoMos in other people's training loops: a Lightning callback and a Hugging Face ``TrainerCallback``.

Both project the model's trainable parameters once per training epoch,
after the last optimiser step and before that epoch's validation (as
``momos train`` does), with a seeded :class:`~momos.MoMos` whose generator
state travels with the framework's checkpoint, so the motif draws are the
same as ``momos train`` with the same seed. The projection statistics go to
the framework's own logger (``pl_module.log_dict``; HF ``Trainer.log`` when
the trainer is given, else ``state.log_history``), and the last mosaic is
saved with the checkpoint.
"""
from __future__ import annotations

import importlib
import math
from typing import Any

import torch

from kcomplexity.callbacks import hf_log

from .projection import MoMos, Projection

LOG_PREFIX = "momos/"


def _numeric_stats(proj: Projection) -> dict[str, float]:
    """The projection's statistics that loggers accept (numbers), under ``momos/...``."""
    return {LOG_PREFIX + k: float(v) for k, v in proj.stats().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _mosaic_state(proj: Projection | None) -> dict[str, Any] | None:
    """The last mosaic as plain tensors and lists (loadable with ``torch.load(weights_only=True)``)."""
    if proj is None:
        return None
    m = proj.mosaic
    return {"motifs": m.motifs, "index": m.index, "s": m.s, "names": list(m.names),
            "shapes": [list(sh) for sh in m.shapes], "dtypes": list(m.dtypes)}


def lightning_momos(s: int = 2, capacity: float | None = 0.05, k: int | None = None, force_zero: bool = True,
                    seed: int = 0, scope: str = "global", package: str = "lightning.pytorch") -> Any:
    """A Lightning ``Callback`` that applies MoMos once per training epoch.

    ``package`` is ``"lightning.pytorch"`` or ``"pytorch_lightning"`` (their
    Callback classes differ). The projection runs after the epoch's last
    training batch, before validation; ``momos/k``, ``momos/distortion``,
    ... are logged with ``pl_module.log_dict``; the projector's generator is
    the callback's checkpoint state and the last mosaic is saved under
    ``checkpoint["momos_mosaic"]``.
    """
    base = importlib.import_module(package).Callback
    projector = MoMos(s, capacity, k, force_zero, seed=seed, scope=scope)

    class MoMosCallback(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.projector = projector
            self._done_epoch = -1

        def _project(self, trainer: Any, pl_module: Any) -> None:
            if self._done_epoch == trainer.current_epoch:
                return
            self._done_epoch = trainer.current_epoch
            proj = self.projector(pl_module)
            pl_module.log_dict(_numeric_stats(proj), on_step=False, on_epoch=True)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            last = trainer.num_training_batches
            if isinstance(last, int) and batch_idx == last - 1:
                self._project(trainer, pl_module)  # before the epoch-end validation

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self._project(trainer, pl_module)  # loaders of unknown length

        def state_dict(self) -> dict[str, Any]:
            return {"generator": self.projector.state_dict()["generator"], "done_epoch": self._done_epoch}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.projector.load_state_dict({"generator": state["generator"]})
            self._done_epoch = int(state["done_epoch"])

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            checkpoint["momos_mosaic"] = _mosaic_state(self.projector.last)

    return MoMosCallback()


def hf_momos(s: int = 2, capacity: float | None = 0.05, k: int | None = None, force_zero: bool = True,
             seed: int = 0, scope: str = "global", trainer: Any = None) -> Any:
    """A Hugging Face ``TrainerCallback`` that applies MoMos at every epoch end (before evaluation).

    With ``trainer`` (or after ``callback.trainer = trainer``) the statistics
    go through ``Trainer.log`` and so to every reporting integration;
    without it they are appended to ``state.log_history``. The last mosaic is
    saved as ``momos_mosaic.pt`` in each checkpoint folder, beside the
    projector's generator state (``momos_state.pt``).
    """
    from transformers import TrainerCallback

    projector = MoMos(s, capacity, k, force_zero, seed=seed, scope=scope)

    class MoMosCallback(TrainerCallback):
        def __init__(self) -> None:
            self.projector = projector
            self.trainer = trainer

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            hf_log(self.trainer, state, _numeric_stats(self.projector(kwargs["model"])))

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from pathlib import Path

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                torch.save(_mosaic_state(self.projector.last), folder / "momos_mosaic.pt")
                torch.save(self.projector.state_dict(), folder / "momos_state.pt")

    return MoMosCallback()


__all__ = ["lightning_momos", "hf_momos"]
