"""``momos`` command line: ``train``, ``compare``, ``demo``.

Bad input ends with one line on stderr and exit status 2, never a traceback
(:func:`kcomplexity.cli.run_guarded`).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kcomplexity.cli import run_guarded

from .config import METHODS, TrainConfig
from .errors import MoMosError
from .data import DATASETS
from .models import MODELS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="momos", description="Mosaic-of-Motifs training with complexity logging.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run and log every estimator every epoch")
    t.add_argument("--out", "-o", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    t.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    t.add_argument("--model", default="mlp", help=f"one of {', '.join(MODELS)}")
    t.add_argument("--data", default="digits", help=f"one of {', '.join(DATASETS)}")
    t.add_argument("--method", default="baseline", help=f"one of {', '.join(METHODS)}")
    t.add_argument("--epochs", type=int, help="default: the model's profile (20; grok-mlp 60)")
    t.add_argument("--batch-size", type=int, help="default: the model's profile (128; grok-mlp full batch)")
    t.add_argument("--steps-per-epoch", type=int,
                   help="optimiser steps per epoch (default: one pass over the data; grok-mlp 100)")
    t.add_argument("--optimizer", help="adamw | sgd | adam (default: the model's paper profile)")
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--momentum", type=float)
    t.add_argument("--beta2", type=float, help="Adam/AdamW second-moment decay (default 0.999; grok-mlp 0.98)")
    t.add_argument("--schedule", help="cosine | constant (default: the model's profile)")
    t.add_argument("--best-by", help="val_acc | val_loss: what picks best.safetensors (default val_acc; "
                                     "mnist-official: val_loss)")
    t.add_argument("-s", "--block-size", dest="s", type=int, default=2, help="MoMos block size s")
    t.add_argument("--capacity", type=float, default=0.05, help="motifs as a fraction of blocks (0, 1]")
    t.add_argument("-k", type=int, help="number of motifs (instead of --capacity)")
    t.add_argument("--no-force-zero", dest="force_zero", action="store_false")
    t.add_argument("--scope", default="global", help="global | tensor")
    t.add_argument("-q", type=int, default=8, help="QAT bits")
    t.add_argument("--qat-biases", action="store_true",
                   help="QAT also quantises biases and other non-weight parameters (default: module.weight only, as "
                        "the official code)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--estimators", "-e", default="lzma,zstd,bdm,mdl,mdl-paper")
    t.add_argument("--data-dir")
    t.add_argument("--download", action="store_true", help="let torchvision download fashion-mnist/cifar10")
    t.add_argument("--limit", type=int, help="use at most this many training examples")
    t.add_argument("--width", type=int, help="model width (MLP hidden units, ResNet base channels, ViT dim)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--devices", type=int, default=1,
                   help="processes (gloo on CPU) or GPUs (nccl) training together; --batch-size stays the global batch")
    t.add_argument("--modulus", type=int, default=97, help="modadd: the modulus p")
    t.add_argument("--train-fraction", type=float, default=0.4, help="modadd: fraction of the p*p pairs to train on")
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    c = sub.add_parser("compare", help="table and plot of finished or running runs")
    c.add_argument("runs", nargs="+")
    c.add_argument("--plot", help="write a PNG here")
    c.add_argument("--format", "-f", choices=("table", "json", "csv"), default="table")

    d = sub.add_parser("demo", help="baseline and MoMos runs on bundled digits, then compare them")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--quiet", action="store_true")
    return p


def _train(args: argparse.Namespace) -> None:
    from .trainer import train

    if args.resume:
        given = sorted(f"--{k.replace('_', '-')}" for k, v in vars(args).items()
                       if k in TrainConfig.defaults() and v != _parser_defaults().get(k))
        if given:
            raise MoMosError(f"--resume continues the run as it was configured; {', '.join(given)} would change it "
                             "(start a new run with another --out instead)")
        result = train({}, args.out, resume=True, quiet=args.quiet)
    else:
        fields = {k: getattr(args, k) for k in (
            "model", "data", "method", "epochs", "batch_size", "steps_per_epoch", "qat_biases", "optimizer", "lr", "weight_decay",
            "momentum", "beta2", "schedule", "best_by", "s", "capacity", "k", "force_zero", "scope", "q", "seed", "data_dir",
            "download", "limit", "width", "device", "devices", "modulus", "train_fraction")}
        fields["estimators"] = [e.strip() for e in args.estimators.split(",") if e.strip()]
        result = train(TrainConfig(**fields), args.out, overwrite=args.overwrite, quiet=args.quiet)
    print(json.dumps(result.to_json()["final"] | {"test_acc": result.test_acc}, indent=None))


def _parser_defaults() -> dict[str, object]:
    train_parser = _parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    return {a.dest: a.default for a in train_parser._actions}


def _compare(args: argparse.Namespace) -> None:
    from . import compare

    runs = [compare.load_run(r) for r in args.runs]
    tab = compare.table(runs)
    text = {"table": lambda: tab.to_string(float_format=_number),
            "json": lambda: tab.to_json(orient="index", indent=2), "csv": tab.to_csv}[args.format]()
    print(text)
    if args.plot:
        print(f"plot: {compare.plot(runs, args.plot)}", file=sys.stderr)


def _number(v: float) -> str:
    """Bits as whole numbers with separators; accuracies, ratios and distortions with 4 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.4g}"


def _demo(args: argparse.Namespace) -> None:
    from . import compare
    from .trainer import train

    if args.epochs < 1:
        raise MoMosError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    common = {"model": "mlp", "data": "digits", "epochs": args.epochs, "estimators": ["lzma", "zstd", "bdm", "mdl",
                                                                                      "mdl-paper"]}
    runs = []
    for method in ("baseline", "momos"):
        print(f"== {method}: paper MLP on scikit-learn digits, {args.epochs} epochs -> {out / method}", file=sys.stderr)
        train(TrainConfig(method=method, **common), out / method, overwrite=True, quiet=args.quiet)
        runs.append(compare.load_run(out / method))
    print(compare.table(runs).to_string(float_format=_number))
    print(f"plot: {compare.plot(runs, out / 'compare.png')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``momos`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    return run_guarded("momos", {"train": _train, "compare": _compare, "demo": _demo}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
