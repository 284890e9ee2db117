"""The two-part code of a trained model: its weights at a stated precision, then the labels given those weights.

Part one is the quantised code of every trainable tensor (:func:`kcomplexity.encode_quantized`,
step ``rel`` x the tensor's RMS) plus floating-point buffers (batch-norm
statistics) at their stored width. Part two codes the training labels with
the predictions of the model rebuilt from part one (:mod:`kcomplexity.codecs.labels`).
Both are real codes; their sum is the two-part description length in bits,
with the distortion part one bought (MSE, and the quantised model's test
accuracy) beside it.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parametrize

import kcomplexity as kc
from kcomplexity.codecs import labels as label_code
from kcomplexity.errors import NonFiniteLossError
from kcomplexity.codecs.quant import check_precision

from . import data as data_mod
from .evaluation import accuracy, batched_logits, probabilities
from .rundir import write_atomic

FILE = "two_part.json"


@dataclass
class TwoPart:
    """Bits of the model (quantised code) and of the training labels given it."""

    rel: float
    model_bits: int
    data_bits: int
    ideal_data_bits: float  #: sum of -log2 p of the labels (what an ideal coder spends)
    labels: int
    mse: float              #: mean squared error of the quantised weights
    test_acc: float         #: accuracy of the quantised model on the test split
    test_acc_exact: float   #: and of the model before quantisation

    @property
    def total_bits(self) -> int:
        return self.model_bits + self.data_bits

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_bits": self.total_bits}


def measure(model: torch.nn.Module, train: data_mod.Split, test: data_mod.Split, rel: float = 0.1,
            device: str | torch.device = "cpu") -> TwoPart:
    """Two-part code of ``model`` (left unchanged) on ``train``'s labels; weights quantised at ``rel``."""
    check_precision(rel=rel)
    net = copy.deepcopy(model).to("cpu")
    for module in list(net.modules()):  # bake QAT's effective weights into plain parameters
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
        raise NonFiniteLossError("the model holds NaN/Inf weights; a two-part code needs finite weights")
    net.to(device)
    test_exact = accuracy(net, test, device)
    model_bits, sq, n = 0, 0.0, 0
    with torch.no_grad():
        for _, p in net.named_parameters():
            code = kc.encode_quantized(p.detach(), rel=rel)
            back = torch.as_tensor(np.asarray(kc.decode_quantized(code)), dtype=p.dtype).reshape(p.shape)
            sq += float((back.double() - p.double()).square().sum())
            n += p.numel()
            p.copy_(back)
            model_bits += 8 * len(code)
        model_bits += sum(b.numel() * b.element_size() * 8 for b in net.buffers() if b.is_floating_point())
    probs = _probabilities(net, train.x, device)
    labels = train.y.numpy()
    code = label_code.encode_labels([(probs, labels)])
    return TwoPart(rel, model_bits, 8 * len(code), label_code.ideal_bits(probs, labels), int(labels.size),
                   sq / max(n, 1), accuracy(net, test, device), test_exact)


def two_part(run_dir: str | Path, rel: float = 0.1) -> TwoPart:
    """Two-part code of a finished run's last-epoch weights; also written to ``RUN_DIR/two_part.json``."""
    from .runs import load_run_model

    run_dir = Path(run_dir)
    model, ds = load_run_model(run_dir)
    result = measure(model, ds.train, ds.test, rel)
    write(run_dir, result)
    return result


def write(run_dir: Path, result: TwoPart) -> None:
    """Keep ``result`` in the run directory as ``two_part.json`` (read by ``momos compare``)."""
    write_atomic(Path(run_dir) / FILE, json.dumps(result.to_json(), indent=2))


def _probabilities(net: torch.nn.Module, x: torch.Tensor, device: str | torch.device) -> np.ndarray:
    logits = batched_logits(net, x, device).double()
    if not torch.isfinite(logits).all():
        raise NonFiniteLossError("the quantised model gives non-finite outputs; try a smaller rel")
    return probabilities(logits)


__all__ = ["TwoPart", "measure", "two_part"]
