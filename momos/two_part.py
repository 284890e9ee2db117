"""The two-part code of a trained model: its weights at a precision, then the labels given those weights.

Part one is one decodable stream: the architecture (the run's model and
its size, as text), then every trainable tensor's quantised code
(:func:`kcomplexity.encode_quantized`, step ``rel`` x the tensor's RMS) and
every floating-point buffer (batch-norm statistics) by a lossless code,
each framed by its length. Part two codes the training labels with the
predictions of the model rebuilt from part one
(:mod:`kcomplexity.codecs.labels`). Both are real codes; their sum is the
two-part description length in bits, with the distortion part one bought
(MSE, and the quantised model's test accuracy) beside it.

The MDL two-part code is the minimum over precision: by default
:func:`measure` codes the model at every step of a log grid (``REL_GRID``,
which holds 0.1, refined around the best) and keeps the shortest total,
reporting the whole curve; ``rel=R`` gives one fixed point.
"""
from __future__ import annotations

import copy
import math
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parametrize

import kcomplexity as kc
from kcomplexity.codecs import ZstdCodec, labels as label_code
from kcomplexity.codecs.bits import read_varint, varint
from kcomplexity.codecs.quant import check_precision, code_quantized
from kcomplexity.errors import CorruptFileError, NonFiniteLossError

from . import data as data_mod
from .evaluation import accuracy, batched_logits, probabilities
from .rundir import write_atomic

FILE = "two_part.json"


#: the precisions the optimum is searched over: 0.1 x 2^k, k = -6..6 (0.0016 .. 6.4), then refined between the
#: best point's neighbours
REL_GRID = tuple(0.1 * 2.0 ** k for k in range(-6, 7))
MAGIC = b"KC2P"


@dataclass
class TwoPart:
    """Bits of the model (its framed quantised stream) and of the training labels given it, at ``rel``."""

    rel: float
    model_bits: int
    data_bits: int
    ideal_data_bits: float  #: sum of -log2 p of the labels (what an ideal coder spends)
    labels: int
    mse: float              #: mean squared error of the quantised weights
    test_acc: float         #: accuracy of the quantised model on the test split
    test_acc_exact: float   #: and of the model before quantisation
    architecture_bits: int = 0  #: of model_bits: the architecture's text and the stream's magic
    optimum: bool = False   #: rel is the argmin of the curve (not a fixed point)
    #: every precision tried: {"rel", "model_bits", "data_bits", "total_bits", "mse"}
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_bits(self) -> int:
        return self.model_bits + self.data_bits

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_bits": self.total_bits}


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy with QAT's effective weights baked into plain parameters."""
    net = copy.deepcopy(model).to("cpu")
    for module in list(net.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
        raise NonFiniteLossError("the model holds NaN/Inf weights; a two-part code needs finite weights")
    return net


def encode_model(net: torch.nn.Module, rel: float, architecture: str) -> tuple[bytes, float]:
    """Part one as one stream: magic, the architecture's text, then each parameter's quantised code and each
    floating-point buffer's lossless code, in module order, each framed by its length; (stream, mse)."""
    arch = architecture.encode()
    out, sq, n = [MAGIC, varint(len(arch)), arch], 0.0, 0
    for p in net.parameters():
        code = code_quantized(p.detach(), rel=rel)  # its distortion comes with it: no decode needed here
        sq += code.sse
        n += code.numel
        out += [varint(len(code.data)), code.data]
    for b in net.buffers():
        if b.is_floating_point():
            code = ZstdCodec().encode(b.detach())
            out += [varint(len(code)), code]
    return b"".join(out), sq / max(n, 1)


def decode_model(stream: bytes, net: torch.nn.Module) -> str:
    """Load part one into ``net`` (same architecture: its parameters and floating-point buffers in order);
    returns the architecture's text. CorruptFileError for a stream that is not one."""
    buf = memoryview(stream)
    if bytes(buf[:4]) != MAGIC:
        raise CorruptFileError("not a two-part model stream (bad magic)")
    try:
        size, pos = read_varint(buf, 4)
        architecture = bytes(buf[pos:pos + size]).decode()
        pos += size
        tensors = list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]
        params = len(list(net.parameters()))
        with torch.no_grad():
            for i, t in enumerate(tensors):
                size, pos = read_varint(buf, pos)
                code = bytes(buf[pos:pos + size])
                pos += size
                values = (kc.decode_quantized(code) if i < params else ZstdCodec().decode(code).values())
                t.copy_(torch.as_tensor(np.asarray(values)).reshape(t.shape).to(t.dtype))
    except (IndexError, UnicodeDecodeError, RuntimeError):
        raise CorruptFileError("corrupt two-part model stream") from None
    if pos != len(buf):
        raise CorruptFileError("corrupt two-part model stream: bytes after the last tensor")
    return architecture


def measure(model: torch.nn.Module, train: data_mod.Split, test: data_mod.Split, rel: float | None = None,
            device: str | torch.device = "cpu", architecture: str | None = None) -> TwoPart:
    """Two-part code of ``model`` (left unchanged) on ``train``'s labels: at its optimum over precision
    (``rel=None``), or with the weights quantised at ``rel``. ``architecture`` names the model for the
    decoder (counted in the model part; default: the module's class)."""
    if rel is not None:
        check_precision(rel=rel)
    net = _plain(model)
    architecture = architecture or type(model).__name__
    exact = copy.deepcopy(net).to(device)
    test_exact = accuracy(exact, test, device)
    labels = train.y.numpy()
    points: dict[float, TwoPart] = {}
    streams: dict[float, bytes] = {}
    arch_bits = 8 * len(MAGIC + varint(len(architecture.encode())) + architecture.encode())

    def at(r: float) -> TwoPart:
        if r not in points:
            streams[r], mse = encode_model(net, r, architecture)
            probs = _probabilities(_decoded(streams[r]), train.x, device)
            code = label_code.encode_labels([(probs, labels)])
            # the quantised model's test accuracy is measured once, for the point kept
            points[r] = TwoPart(r, 8 * len(streams[r]), 8 * len(code), label_code.ideal_bits(probs, labels),
                                int(labels.size), mse, math.nan, test_exact, arch_bits)
        return points[r]

    def _decoded(stream: bytes) -> torch.nn.Module:
        quantised = copy.deepcopy(net)
        decode_model(stream, quantised)  # the decoder's model: exactly what part two is coded with
        return quantised.to(device)

    if rel is not None:
        best = at(rel)
    else:
        for r in REL_GRID:
            _try(at, r)
        best = _best(points)
        i = REL_GRID.index(best.rel) if best.rel in REL_GRID else None
        if i is not None:  # refine: the geometric midpoints to the best point's neighbours
            for j in (i - 1, i + 1):
                if 0 <= j < len(REL_GRID):
                    _try(at, (REL_GRID[i] * REL_GRID[j]) ** 0.5)
        best = _best(points)
        best.optimum = True
    best.test_acc = accuracy(_decoded(streams[best.rel]), test, device)
    best.curve = [{"rel": r, "model_bits": t.model_bits, "data_bits": t.data_bits, "total_bits": t.total_bits,
                   "mse": t.mse} for r, t in sorted(points.items())]
    return best


def _try(at: Any, r: float) -> None:
    """A grid point; one whose quantised model gives non-finite outputs (a step too coarse) is left out."""
    try:
        at(r)
    except NonFiniteLossError:
        pass


def _best(points: dict[float, TwoPart]) -> TwoPart:
    if not points:
        raise NonFiniteLossError("no precision of the grid gives a model with finite outputs")
    return min(points.values(), key=lambda t: (t.total_bits, t.rel))


def two_part(run_dir: str | Path, rel: float | None = None) -> TwoPart:
    """Two-part code of a finished run's last-epoch weights, at its optimum over precision (or at ``rel``);
    also written to ``RUN_DIR/two_part.json``."""
    from .config import TrainConfig
    from .rundir import stored_config
    from .runs import architecture, load_run_model

    run_dir = Path(run_dir)
    model, ds = load_run_model(run_dir)
    cfg = TrainConfig.from_json(stored_config(run_dir)).resolved()
    result = measure(model, ds.train, ds.test, rel, architecture=architecture(cfg))
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


__all__ = ["TwoPart", "measure", "two_part", "encode_model", "decode_model", "REL_GRID"]
