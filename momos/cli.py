"""``momos`` command line: ``train``, ``compare``, ``demo``.

Bad input ends with one line on stderr and exit status 2, never a traceback
(:func:`kcomplexity.cli.run_guarded`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kcomplexity.cli import run_guarded

from .config import TrainConfig
from .errors import MoMosError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with the field's default and help (the config is the one source)."""
    defaults = TrainConfig.defaults()
    for f in dataclasses.fields(TrainConfig):
        flags = f.metadata.get("flags", ("--" + f.name.replace("_", "-"),))
        default, text = defaults[f.name], f.metadata["help"]
        shown = f" (default: {default})" if default not in (None, False) and not isinstance(default, list) else ""
        if f.name == "estimators":
            parser.add_argument(*flags, dest=f.name, default=",".join(default), help=f"{text} (default: %(default)s)")
        elif "bool" in str(f.type):
            action = "store_false" if default else "store_true"
            parser.add_argument(*flags, dest=f.name, action=action, help=f"do not {text}" if default else text)
        else:
            kind = int if "int" in str(f.type) else float if "float" in str(f.type) else str
            parser.add_argument(*flags, dest=f.name, type=kind, default=default, help=text + shown)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="momos", description="Mosaic-of-Motifs training with complexity logging.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run and log every estimator every epoch")
    t.add_argument("--out", "-o", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    t.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    add_config_arguments(t)
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
        defaults = _parser_defaults()
        given = sorted(f"--{k.replace('_', '-')}" for k, v in vars(args).items()
                       if k in TrainConfig.defaults() and v != defaults.get(k))
        if given:
            raise MoMosError(f"--resume continues the run as it was configured; {', '.join(given)} would change it "
                             "(start a new run with another --out instead)")
        result = train({}, args.out, resume=True, quiet=args.quiet)
    else:
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
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
