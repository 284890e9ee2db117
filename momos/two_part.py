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
which holds 0.1), doubles the step past the grid's edge while the minimum
sits on it (at most ``MAX_EXTEND`` times), refines around the best, keeps
the shortest total and reports the whole curve; ``rel=R`` gives one fixed
point. A minimum still on the edge of what was tried is reported as such
(``edge``): it bounds the two-part length from above, it is not an optimum.

Beside every total stands the no-model code (``no_model_bits``): the labels
sent uniformly, log2 C bits each, by the same label coder. A two-part total
means something only where it beats that: a model that does not pay for
itself is no explanation of the labels.
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
#: doublings (or halvings) of the step tried past the grid's edge while the minimum lies on it
MAX_EXTEND = 8
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
    no_model_bits: int = 0  #: the labels' real code with no model (uniform over the classes)
    #: "coarse" or "fine" when the argmin is the coarsest or finest step tried: then a bound, not an optimum
    edge: str | None = None
    #: every precision tried: {"rel", "model_bits", "data_bits", "total_bits", "mse"}
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_bits(self) -> int:
        return self.model_bits + self.data_bits

    @property
    def beats_no_model(self) -> bool:
        """Whether the model pays for itself: the two-part total is shorter than the labels with no model."""
        return self.total_bits < self.no_model_bits

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_bits": self.total_bits, "beats_no_model": self.beats_no_model}


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
        best = _search(at, points)
    best.test_acc = accuracy(_decoded(streams[best.rel]), test, device)
    uniform = label_code.uniform(labels.size, _classes(exact, train, device))
    best.no_model_bits = 8 * len(label_code.encode_labels([(uniform, labels)]))
    best.curve = [{"rel": r, "model_bits": t.model_bits, "data_bits": t.data_bits, "total_bits": t.total_bits,
                   "mse": t.mse} for r, t in sorted(points.items())]
    return best


def _search(at: Any, points: dict[float, "TwoPart"]) -> "TwoPart":
    """The shortest total over the grid, extended past its edge while the minimum sits there, then refined
    between the best step's neighbours; marks an argmin still on the edge of the steps tried."""
    steps = list(REL_GRID)
    for r in steps:
        _try(at, r)
    for _ in range(MAX_EXTEND):
        best = _best(points)
        if best.rel == steps[-1]:
            steps.append(steps[-1] * 2)
            _try(at, steps[-1])
        elif best.rel == steps[0]:
            steps.insert(0, steps[0] / 2)
            _try(at, steps[0])
        else:
            break
    best = _best(points)
    i = steps.index(best.rel)
    for j in (i - 1, i + 1):  # refine: the geometric midpoints to the best step's neighbours
        if 0 <= j < len(steps):
            _try(at, (steps[i] * steps[j]) ** 0.5)
    best = _best(points)
    best.optimum = True
    tried = sorted(points)
    best.edge = "coarse" if best.rel == tried[-1] else "fine" if best.rel == tried[0] else None
    return best


def _classes(net: torch.nn.Module, split: data_mod.Split, device: str | torch.device) -> int:
    """The number of classes the model predicts (its output width)."""
    return int(batched_logits(net, split.x[:1], device).shape[1])


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
    cfg = TrainConfig.from_stored(stored_config(run_dir)).resolved()
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
