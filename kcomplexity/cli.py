"""``kcomplexity`` command line: ``score``, ``rd``, ``pack``, ``unpack``, ``estimators``, ``demo``.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from typing import Any

from .checks import seed_arg
from .errors import EstimatorSettingError, KComplexityError
from .estimators.base import SCORE
from .sources import refuse_output_onto

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kcomplexity", description="Estimate the algorithmic complexity of weights, in bits.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score a weights file (.safetensors, .pt/.pth, .npz, .npy)")
    s.add_argument("path", help="weights file, model folder, sharded index (model.safetensors.index.json), or a "
                                "model name in the local Hugging Face cache")
    s.add_argument("--estimators", "-e", default=",".join(SCORE),
                   help=f"comma-separated estimator names, settings as name:key=value (default: {','.join(SCORE)})")
    s.add_argument("--whole", action="store_true", help="total = estimate of all tensors concatenated in order")
    s.add_argument("--format", "-f", choices=("table", "json", "csv"), default="table")
    s.add_argument("--output", "-o", help="write to this file instead of stdout")
    s.add_argument("--allow-nonfinite", action="store_true", help="score tensors holding NaN/Inf by their raw bytes")
    s.add_argument("--jobs", "-j", type=int, default=1, help="tensors coded at once on threads (default: 1)")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    r = sub.add_parser("rd", help="rate-distortion curve: bits of the quantised code against the distortion it buys")
    r.add_argument("path", help="weights file")
    r.add_argument("--rel", default=None,
                   help="comma-separated steps as a fraction of each tensor's RMS (default: 1,0.3,0.1,0.03,0.01,0.003 "
                        "unless --mse is given)")
    r.add_argument("--mse", help="comma-separated target MSEs: one point each at the largest global step within it, "
                                 "with the Shannon lower bound beside it")
    r.add_argument("--momos", metavar="SETTINGS",
                   help="add MoMos points on a copy of the weights, e.g. 's=2' or 's=2:seed=1' (needs --capacity)")
    r.add_argument("--capacity", help="comma-separated MoMos capacities for --momos (default 0.01,0.05,0.2)")
    r.add_argument("--rdoq", type=float, default=0.0, metavar="LAMBDA",
                   help="rate-distortion optimised quantisation: a bit weighs LAMBDA squared steps (0.1 is a good "
                        "start; default 0, nearest level)")
    r.add_argument("--trellis", action="store_true",
                   help="code by trellis-coded quantisation with context-modelled ANS (code 'tcq': fewer bits at the "
                        "same MSE, every value within 2 steps); --rdoq then sets its search's weight of a bit "
                        "(default 0.3)")
    r.add_argument("--plot", help="write a PNG of bits/param against MSE here")
    r.add_argument("--format", "-f", choices=("table", "json", "csv"), default="table")
    r.add_argument("--output", "-o", help="write to this file instead of stdout")

    k = sub.add_parser("pack", help="code every tensor of a checkpoint into one file (the bits, as a file)")
    k.add_argument("path", help="weights file, model folder, sharded index or cached model name (as for score)")
    k.add_argument("--estimator", "-e", default="fpc",
                   help="the code: fpc, pco[:level=L], zstd[:level=L], mdl[:s=S], quant:rel=R or quant:delta=D "
                        "(default: fpc); tensors it cannot take go through zstd")
    k.add_argument("--output", "-o", required=True, help="the pack file to write")
    k.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    k.add_argument("--jobs", "-j", type=int, default=1, help="tensors coded at once in worker processes (default: 1)")
    k.add_argument("--allow-nonfinite", action="store_true", help="pack tensors holding NaN/Inf")

    u = sub.add_parser("unpack", help="a pack file back to a safetensors file")
    u.add_argument("path", help="the pack file")
    u.add_argument("--output", "-o", required=True, help="the safetensors file to write")
    u.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    u.add_argument("--max-values", type=int, default=None,
                   help="refuse tensors claiming more values than this (default: 2**28, 1 GiB of float32)")

    sub.add_parser("estimators", help="list the registered estimators and their default settings")

    d = sub.add_parser("demo", help="score a small MLP at initialisation and after training on bundled digits")
    d.add_argument("--epochs", type=int, default=40)
    d.add_argument("--seed", type=seed_arg, default=0)
    d.add_argument("--estimators", "-e", default=None, help="comma-separated estimator names")
    return p


def _score(args: argparse.Namespace) -> None:
    from .scoring import score

    refuse_output_onto(args.output, args.path)
    report = score(args.path, args.estimators, whole=args.whole, allow_nonfinite=args.allow_nonfinite,
                   progress=not args.quiet, jobs=args.jobs)
    text = {"table": report.to_table, "json": report.to_json, "csv": report.to_csv}[args.format]()
    _emit(text, args.output)


def _rd(args: argparse.Namespace) -> None:
    from .rd import rd

    extra = None
    if args.momos is not None or args.capacity is not None:
        options = _settings(args.momos or "s=2")
        options["capacity"] = _floats(args.capacity or "0.01,0.05,0.2", "--capacity")
        extra = {"momos": options}
    refuse_output_onto(args.output, args.path)
    refuse_output_onto(args.plot, args.path)
    curve = rd(args.path, _floats(args.rel, "--rel") if args.rel is not None else None, extra=extra,
               mse=_floats(args.mse, "--mse") if args.mse is not None else None, rdoq=args.rdoq,
               trellis=args.trellis)
    df = curve.to_frame()
    text = {"table": lambda: df.to_string(index=False, float_format=lambda v: f"{v:.4g}"),
            "json": lambda: df.to_json(orient="records", indent=2), "csv": lambda: df.to_csv(index=False)}[args.format]()
    _emit(text, args.output)
    if args.plot:
        print(f"plot: {curve.plot(args.plot)}", file=sys.stderr)


def _pack(args: argparse.Namespace) -> None:
    from .pack import pack

    result = pack(args.path, args.output, args.estimator, overwrite=args.overwrite, jobs=args.jobs,
                  allow_nonfinite=args.allow_nonfinite)
    print(result.summary())


def _unpack(args: argparse.Namespace) -> None:
    from .codecs.container import MAX_VALUES
    from .pack import unpack

    limit = MAX_VALUES if args.max_values is None else args.max_values
    if limit < 1:
        raise KComplexityError(f"--max-values must be >= 1, got {limit}")
    packed = unpack(args.path, args.output, overwrite=args.overwrite, max_values=limit)
    print(f"{args.output}: {len(packed.tensors)} tensors, {sum(t['numel'] for t in packed.tensors):,} parameters "
          f"({packed.codec})")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EstimatorSettingError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _settings(text: str) -> dict[str, Any]:
    """'s=2:seed=1' -> {"s": 2, "seed": 1} (integers where they parse)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.replace(",", ":").split(":")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise EstimatorSettingError(f"setting '{item}' is not key=value")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise EstimatorSettingError(f"setting '{item}' needs an integer value") from None
    return out


def _estimators(_: argparse.Namespace) -> None:
    from .estimators import available, get

    for name in available():
        est = get(name)
        settings = ", ".join(f"{k}={v}" for k, v in est.settings().items())
        print(f"{name:<12} [{est.kind}] {est.description}" + (f"  ({settings})" if settings else ""))


def _demo(args: argparse.Namespace) -> None:
    from . import demo

    if args.epochs < 1:
        raise KComplexityError(f"--epochs must be >= 1, got {args.epochs}")
    ests = args.estimators.split(",") if args.estimators else demo.DEMO_ESTIMATORS
    print(demo.run(ests, epochs=args.epochs, seed=args.seed))


def _emit(text: str, output: str | None) -> None:
    """Print ``text``, or write it to ``output`` atomically (a failure leaves the old file or none)."""
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    from .fileio import write_atomic

    try:
        write_atomic(output, text)
    except KComplexityError:
        raise
    except OSError as exc:
        raise KComplexityError(f"cannot write {output}: {exc.strerror or exc}") from None


#: modules only some extras install, and the extra that brings each
OPTIONAL_MODULES = {"torch": "train", "sklearn": "train", "matplotlib": "plot"}


def run_guarded(prog: str, handler: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a CLI handler; bad input becomes one line on stderr and exit status 2, never a traceback."""
    try:
        handler(args)
    except KComplexityError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", EXIT_BAD_INPUT)  # bad input is 2; work that failed says otherwise
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL_MODULES:
            raise
        print(f"{prog}: error: this needs {exc.name}, which a scoring-only install leaves out; "
              f"pip install 'kcomplexity[{OPTIONAL_MODULES[exc.name]}]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader went away (`... | head -1`): exit quietly as Unix tools do, with SIGPIPE's status; stdout is
        # pointed at /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except RecursionError:
        print(f"{prog}: error: an input is nested too deeply to read", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"{prog}: error: out of memory (an input larger than this machine can hold; without --whole "
              "tensors are read one at a time)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the file system said no (a name too long, no space, no permission): one line
        where = f": {str(exc.filename)[:200]}" if exc.filename else ""
        print(f"{prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # a second Ctrl-C while exit handlers wait for worker threads ends the process at once, quietly
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kcomplexity`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    return run_guarded("kcomplexity", {"score": _score, "rd": _rd, "pack": _pack, "unpack": _unpack,
                                          "estimators": _estimators, "demo": _demo}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
