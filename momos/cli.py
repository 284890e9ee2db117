"""``momos`` command line: ``train``, ``sweep``, ``compare``, ``demo``, ``prequential``, ``two-part``.

Bad input ends with one line on stderr and exit status 2, never a traceback
(:func:`kcomplexity.cli.run_guarded`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any
from collections.abc import Sequence
from pathlib import Path

from kcomplexity.checks import seed_arg
from kcomplexity.cli import run_guarded

from .errors import MoMosError
from .trackers import DEFAULT_MLFLOW_URI


def add_config_arguments(parser: argparse.ArgumentParser, cls: Any = None) -> None:
    """One option per field of a config dataclass (TrainConfig unless ``cls``), with the field's default and
    help: the dataclass is the one source of its options."""
    from .config import TrainConfig

    cls = cls or TrainConfig
    defaults = cls.defaults()
    for f in dataclasses.fields(cls):
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


def _parser(train_options: bool = True) -> argparse.ArgumentParser:
    """The command-line parser; without ``train_options`` the train and prequential commands' option flags
    (which import torch through the model and data registries) are left out, so reading runs needs no torch."""
    p = argparse.ArgumentParser(prog="momos", description="Mosaic-of-Motifs training with complexity logging.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one run and log every estimator every epoch")
    t.add_argument("--out", "-o", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    t.add_argument("--overwrite", action="store_true", help="replace whatever --out holds")
    if train_options:
        add_config_arguments(t)
    t.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    t.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files here")
    t.add_argument("--mlflow", metavar="URI", nargs="?", const=DEFAULT_MLFLOW_URI,
                   help=f"also log to MLflow (default store: {DEFAULT_MLFLOW_URI})")

    c = sub.add_parser("compare", help="table and plot of runs, or statistics over a sweep folder")
    c.add_argument("runs", nargs="+", help="run directories, or one sweep folder")
    c.add_argument("--plot", help="write a figure here (.png or .svg): the curves of runs, or a sweep's frontier")
    c.add_argument("--format", "-f", choices=("table", "json", "csv"), default="table")
    c.add_argument("--reference", metavar="KEY=VALUE", help="sweep: paired differences against this group, "
                                                            "e.g. method=baseline (mean and 95%% t-interval over seeds)")
    c.add_argument("--frontier", metavar="EST", help="sweep: plot test accuracy against EST's final bits (--plot)")
    c.add_argument("--curves", action="store_true", help="sweep: with --frontier, also plot EST per epoch "
                                                          "(mean and band over seeds) beside --plot")

    sw = sub.add_parser("sweep", help="a grid of runs (methods x settings x seeds), locally or on a Ray cluster")
    sw.add_argument("spec", nargs="?", help="TOML spec: [base], [grid], [zip], [resources] (see README)")
    sw.add_argument("--out", "-o", required=True, help="sweep folder: sweep.toml and one run directory per point")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    sw.add_argument("--zip", action="append", default=[], metavar="KEY=V1,V2",
                    help="an axis that advances together with the other --zip axes (repeatable)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a base config value")
    sw.add_argument("--jobs", "-j", type=int, default=1, help="points at once, in separate processes (local)")
    sw.add_argument("--backend", choices=("local", "ray"), default="local")
    sw.add_argument("--address", help="Ray cluster address (default: start or join a local one)")
    sw.add_argument("--tensorboard", metavar="DIR", help="TensorBoard event files, one folder per point")
    sw.add_argument("--mlflow", metavar="URI", nargs="?", const=DEFAULT_MLFLOW_URI,
                    help=f"log every point to MLflow (default store: {DEFAULT_MLFLOW_URI})")
    sw.add_argument("--quiet", action="store_true", help="no progress")

    q = sub.add_parser("prequential", help="prequential (online) code length of a data set's labels (bits)")
    q.add_argument("--model", help="registered model coding each chunk (default: mlp)")
    q.add_argument("--preset", help="a named configuration setting models, chunks and fitting options: best (the "
                                    "shortest MNIST code we found)")
    q.add_argument("--switch", help="comma-separated models to switch between chunk by chunk (replaces --model)")
    q.add_argument("--data", default="digits", help="data set (default: %(default)s)")
    q.add_argument("--chunks", help="comma-separated chunk boundaries, or a named schedule: doubling (64, 128, "
                                    "256, ...; the default), split-last (its last chunk cut in two), fine (growing "
                                    "by sqrt 2: 64, 91, 128, 181, ...), fine-doubling (sqrt 2 below a quarter "
                                    "of the labels, then doubling)")
    q.add_argument("--seed", type=seed_arg, default=0)
    if train_options:  # the fitting options come from TrainOptions (the prequential package imports torch)
        from .prequential.options import TrainOptions

        add_config_arguments(q, TrainOptions)
    q.add_argument("--limit", type=int, help="code only the first N labels of the seeded order")
    q.add_argument("--device", default="cpu")
    q.add_argument("--data-dir", help="folder with the data set's files (offline)")
    q.add_argument("--format", "-f", choices=("table", "json", "csv"), default="table")
    q.add_argument("--output", "-o", help="write the report here instead of stdout")
    q.add_argument("--plot", help="write a PNG of cumulative bits against labels sent")
    q.add_argument("--quiet", action="store_true", help="no progress bar")

    w = sub.add_parser("two-part", help="two-part code of finished runs: weights + labels, at the optimum precision")
    w.add_argument("runs", nargs="+")
    w.add_argument("--rel", type=float, default=None, help="a fixed quantiser step relative to each tensor's RMS "
                                                           "(default: the optimum over a log grid of steps)")
    w.add_argument("--format", "-f", choices=("table", "json"), default="table")

    d = sub.add_parser("demo", help="baseline and MoMos runs on bundled digits, then compare them")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=30)
    d.add_argument("--quiet", action="store_true")
    return p


def _train(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .trainer import train

    if args.resume:
        defaults = _parser_defaults()
        given = sorted(f"--{k.replace('_', '-')}" for k, v in vars(args).items()
                       if k in TrainConfig.defaults() and v != defaults.get(k))
        if given:
            raise MoMosError(f"--resume continues the run as it was configured; {', '.join(given)} would change it "
                             "(start a new run with another --out instead)")
        result = train({}, args.out, resume=True, quiet=args.quiet, trackers=_run_trackers(args))
    else:
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        fields["estimators"] = [e.strip() for e in args.estimators.split(",") if e.strip()]
        result = train(TrainConfig(**fields), args.out, overwrite=args.overwrite, quiet=args.quiet,
                       trackers=_run_trackers(args))
    print(json.dumps(result.to_json()["final"] | {"test_acc": result.test_acc}, indent=None))


def _run_trackers(args: argparse.Namespace) -> list:
    from . import trackers

    return trackers.make(args.tensorboard, args.mlflow, run_name=Path(args.out).name, outputs=args.out)


def _sweep(args: argparse.Namespace) -> None:
    from .sweep import Spec, stored_spec, sweep

    if args.spec is None and not (args.grid or args.zip or args.set):
        spec = stored_spec(Path(args.out))  # `momos sweep --out DIR` continues the sweep recorded there
        if spec is None:
            raise MoMosError("give a spec file or --grid/--zip/--set options (or --out an existing sweep folder)")
    else:
        spec = Spec.from_options(args.grid, args.set, args.zip, path=args.spec)
    result = sweep(spec, args.out, jobs=args.jobs, backend=args.backend, address=args.address, quiet=args.quiet,
                   tensorboard=args.tensorboard, mlflow=args.mlflow)
    print(result.summary())


def _parser_defaults() -> dict[str, object]:
    train_parser = _parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    return {a.dest: a.default for a in train_parser._actions}


def _compare(args: argparse.Namespace) -> None:
    from . import compare

    from kcomplexity.sources import refuse_output_onto

    from .sweep import is_sweep

    refuse_output_onto(args.plot, *args.runs)
    if len(args.runs) == 1 and is_sweep(Path(args.runs[0])):
        return _compare_sweep(args)
    if args.reference or args.frontier or args.curves:
        raise MoMosError("--reference, --frontier and --curves apply to one sweep folder")
    runs = [compare.load_run(r) for r in args.runs]
    tab = compare.table(runs)
    text = {"table": lambda: tab.to_string(float_format=_number),
            "json": lambda: tab.to_json(orient="index", indent=2), "csv": tab.to_csv}[args.format]()
    print(text)
    sentence = compare.shortest_two_part(tab)
    if sentence and args.format == "table":
        print(sentence)
    if args.plot:
        print(f"plot: {compare.plot(runs, args.plot)}", file=sys.stderr)


def _compare_sweep(args: argparse.Namespace) -> None:
    from . import aggregate

    df, axes = aggregate.load_points(args.runs[0])
    summary = aggregate.summarise(df, axes)
    if args.reference:
        aggregate.paired_differences(df, axes, summary, aggregate.parse_reference(args.reference))
    if args.format == "json":
        print(json.dumps([{k: g[k] for k in ("group", "n", "mean", "std", "diff") if k in g} for g in summary],
                         indent=2, default=str))
    else:
        tab = aggregate.to_frame(summary, args.format)
        print(tab.to_string() if args.format == "table" else tab.to_csv())
    if args.frontier:
        if not args.plot:
            raise MoMosError("--frontier needs --plot PATH for the figure")
        aggregate.check_frontier(summary, args.frontier)  # both figures' inputs are checked before either is written
        if args.curves:
            aggregate.check_curves(args.runs[0], args.frontier)
        print(f"plot: {aggregate.frontier_plot(summary, args.frontier, args.plot)}", file=sys.stderr)
        if args.curves:
            plot = Path(args.plot)
            path = plot.with_name(f"{plot.stem}-curves{plot.suffix}")
            print(f"plot: {aggregate.curves_plot(args.runs[0], args.frontier, path)}", file=sys.stderr)
    elif args.plot or args.curves:
        raise MoMosError("for a sweep, --plot and --curves go with --frontier EST")


def _prequential(args: argparse.Namespace) -> None:
    from kcomplexity.cli import _emit
    from kcomplexity.sources import refuse_output_onto

    from .prequential import TrainOptions, prequential
    from .prequential.code import SCHEDULE_NAMES

    names = _list(args.switch, str) if args.switch else [args.model] if args.model else None
    chunks = None
    if args.chunks in SCHEDULE_NAMES:
        chunks = args.chunks
    elif args.chunks:
        try:
            chunks = _list(args.chunks, int)
        except MoMosError:
            raise MoMosError(f"--chunks takes whole-number boundaries or a schedule ({', '.join(SCHEDULE_NAMES)}), "
                             f"got '{args.chunks}'") from None
    refuse_output_onto(args.output, args.plot, args.data_dir)
    refuse_output_onto(args.plot, args.data_dir)
    options = TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)})
    if args.preset is not None:
        if names or chunks or options != TrainOptions():
            raise MoMosError(f"--preset {args.preset} sets the models, chunks and fitting options; give only --data, "
                             "--seed, --limit and --device with it")
        options = None
    model = None if names is None else names if len(names) > 1 else names[0]
    result = prequential(model, args.data, chunks, seed=args.seed, limit=args.limit, device=args.device,
                         data_dir=args.data_dir, quiet=args.quiet, options=options, preset=args.preset)
    text = {"table": result.table, "json": lambda: json.dumps(result.to_json(), indent=2),
            "csv": result.to_csv}[args.format]()
    if args.plot:
        print(f"plot: {result.plot(args.plot)}", file=sys.stderr)
    _emit(text, args.output)


def _list(text: str, kind: type) -> list:
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MoMosError(f"expected a comma-separated list of {kind.__name__} values, got {text!r}") from None


def _two_part(args: argparse.Namespace) -> None:
    from .two_part import two_part

    rows = {}
    for run in args.runs:
        rows[run] = two_part(run, rel=args.rel).to_json()
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return
    import pandas as pd

    tab = pd.DataFrame({run: {k: v for k, v in row.items() if k != "curve"} for run, row in rows.items()}).T
    tab = tab.add_prefix("two_part:")
    print(tab.to_string(float_format=_number))
    from .compare import shortest_two_part

    sentence = shortest_two_part(tab)
    if sentence:
        print(sentence)


def _number(v: float) -> str:
    """Bits as whole numbers with separators; accuracies, ratios and distortions with 4 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:.4g}"


def _demo(args: argparse.Namespace) -> None:
    from . import compare
    from .config import TrainConfig
    from .trainer import train

    if args.epochs < 1:
        raise MoMosError(f"--epochs must be >= 1, got {args.epochs}")
    out = Path(args.out)
    _claim_demo_folder(out)
    common = {"model": "mlp", "data": "digits", "epochs": args.epochs, "estimators": ["lzma", "zstd", "bdm", "mdl",
                                                                                      "mdl-paper"]}
    runs = []
    for method in ("baseline", "momos"):
        print(f"== {method}: paper MLP on scikit-learn digits, {args.epochs} epochs -> {out / method}", file=sys.stderr)
        train(TrainConfig(method=method, **common), out / method, overwrite=True, quiet=args.quiet)
        runs.append(compare.load_run(out / method))
    tab = compare.table(runs)
    print(tab.to_string(float_format=_number))
    print(compare.shortest_two_part(tab) or "")
    print(f"one seed, so no interval: for mean and 95 % intervals over seeds, run\n"
          f"  momos sweep --grid method=baseline,momos --grid seed=0,1,2,3,4 --set epochs={args.epochs} "
          f"--set estimators=lzma,mdl --out {out}-sweep\n  momos compare {out}-sweep --reference method=baseline")
    print(f"plot: {compare.plot(runs, out / 'compare.png')}")


#: the file that marks a folder as the demo's own (it replaces only its runs and compare.png there)
DEMO_MARKER = "demo.json"


def _claim_demo_folder(out: Path) -> None:
    """The demo writes only into a new or empty folder, or one an earlier demo marked as its own."""
    from kcomplexity.fileio import write_atomic

    marker = out / DEMO_MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise MoMosError(f"{out} is not a demo folder (it holds files but no {DEMO_MARKER}); choose another --out: "
                         "nothing there was changed")
    if out.exists() and not out.is_dir():
        raise MoMosError(f"{out} is a file, not a folder for the demo")
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_atomic(marker, json.dumps({"format": "momos-demo", "writes": ["baseline", "momos", "compare.png"]}))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``momos`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = _parser(train_options=command in (None, "train", "prequential")).parse_args(argv)
    commands = {"train": _train, "compare": _compare, "demo": _demo, "prequential": _prequential,
                "two-part": _two_part, "sweep": _sweep}
    return run_guarded("momos", commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
