"""Complexity logging for any training loop, plus thin Lightning and Hugging Face adapters.

``ComplexityLogger(estimators, path).log(model, epoch=e)`` scores the
model's trainable weights with every requested estimator (concatenated, as
the MoMos paper measures) and appends one JSON line per call to ``path``;
each line is flushed and fsynced when written.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import KComplexityError, MissingContextError, NonFiniteError, NotApplicableError
from .estimators.base import LOGGED, Context, Estimate, Estimator, resolve
from .scoring import score
from .sources import NamedArray, is_module, open_source

DEFAULT_ESTIMATORS = LOGGED


def measure_estimates(source: Any, estimators: Any = DEFAULT_ESTIMATORS, whole: bool = True,
                      context: Context | None = None) -> dict[str, Estimate | None]:
    """Every estimator's :class:`Estimate` of ``source`` (bits + details), by label.

    None where an estimator does not apply; estimators whose ``needs`` the
    ``context`` does not meet (``delta`` before there are previous weights)
    are left out. With ``whole=True`` (the MoMos paper's measurement) only
    the estimate of all tensors together is computed, not per-tensor rows.
    """
    ests = resolve(estimators)
    if not whole:
        report = score(source, ests)
        return {k: (None if math.isnan(v) else Estimate(float(v), report.total_details.get(k, {})))
                for k, v in report.total.items()}
    try:
        arrays = list(open_source(source))
    except NonFiniteError:  # diverged weights: no estimate applies, and training goes on
        return {label: None for label in ests}
    out: dict[str, Estimate | None] = {}
    for label, est in ests.items():
        try:
            out[label] = est.estimate_whole(arrays, context)
        except MissingContextError:
            continue
        except NotApplicableError:
            out[label] = None
        except NonFiniteError as exc:  # e.g. delta against diverged previous weights: a missing value, not a crash
            warnings.warn(f"{label}: no estimate this time ({exc})", stacklevel=2)
            out[label] = None
    return out


def measure(source: Any, estimators: Any = DEFAULT_ESTIMATORS, whole: bool = True,
            context: Context | None = None) -> dict[str, float | None]:
    """Total bits per estimator label for ``source`` (see :func:`measure_estimates`)."""
    return {k: (None if e is None else float(e.bits))
            for k, e in measure_estimates(source, estimators, whole, context).items()}


def split_estimates(estimates: dict[str, Estimate | None]) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
    """({label: bits}, {label: details}) for a log record; details only where an estimator gave some."""
    bits = {k: (None if e is None else float(e.bits)) for k, e in estimates.items()}
    details = {k: _json_safe(dict(e.details)) for k, e in estimates.items() if e is not None and e.details}
    return bits, details


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """Details as strict JSON allows: an infinite or NaN float becomes None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning.

    NaN and infinities (a diverged run) are written as Python's json writes
    them (``NaN``, ``Infinity``), which ``json.loads`` reads back.
    """
    try:
        line = json.dumps(record) + "\n"
    except (TypeError, ValueError) as exc:
        raise KComplexityError(f"log record is not JSON: {exc}") from None
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


class ComplexityLogger:
    """Logs every requested estimator on a model's weights, one JSON line per call.

    ``loss_fn(model) -> float`` (on data you fixed) lets ``intrinsic`` run;
    ``delta`` uses the weights of the previous call.

    With ``background=True``, :meth:`log` copies the weights to host memory and
    returns a :class:`~concurrent.futures.Future` of the record; one worker
    thread runs the estimators, in call order, and writes the records in that
    order, with the same numbers as in the foreground. At most ``max_pending``
    snapshots wait or run at once (each is a copy of the weights): a call that
    finds them all taken waits for the oldest to finish, and its record says
    how long in ``waited_s``, so a logger slower than the loop shows itself
    instead of holding ever more copies. :meth:`flush` waits for every record
    (raising the first estimator error), :meth:`close` also stops the worker;
    the logger is a context manager that closes itself.
    """

    def __init__(self, estimators: str | Sequence[str | Estimator] = DEFAULT_ESTIMATORS,
                 path: str | Path | None = None, whole: bool = True,
                 loss_fn: Callable[[Any], float] | None = None, background: bool = False,
                 max_pending: int = 2) -> None:
        self.estimators = resolve(estimators)  # validated now, not at the first epoch
        self.path = Path(path) if path is not None else None
        if self.path is not None and not self.path.parent.is_dir():
            raise KComplexityError(f"cannot log to {self.path}: folder {self.path.parent} does not exist")
        if self.path is not None and self.path.is_dir():
            raise KComplexityError(f"cannot log to {self.path}: it is a directory; give a file such as "
                                   f"{self.path / 'complexity.jsonl'}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise KComplexityError(f"max_pending must be a whole number >= 1, got {max_pending!r}")
        self.whole = whole
        self.loss_fn = loss_fn
        self.records: list[dict[str, Any]] = []
        self._previous: list[NamedArray] | None = None
        self.background, self.max_pending = bool(background), max_pending
        self._pending: deque[Future] = deque()
        self._worker: ThreadPoolExecutor | None = None
        self._needs_model = any("model" in est.needs for est in self.estimators.values())

    def log(self, model: Any, epoch: int, **extra: Any) -> Any:
        """Score ``model`` now; append ``{"epoch", "complexity": {est: bits}, "details", "estimators_s", **extra}``.

        ``details`` holds what each figure buys (a lossy code's ``mse`` and
        ``max_abs_err``, ``intrinsic``'s ``rel`` and losses, ``mdl``'s ``rac``).
        Returns the record, or with ``background=True`` a Future of it.
        """
        if not self.background:
            return self._measure(*self._snapshot(model), int(epoch), extra, 0.0)
        waited = 0.0
        if len(self._pending) >= self.max_pending:
            t = time.perf_counter()
            self._pending[0].exception()  # waits; an error is raised by flush() and by its own future
            waited = time.perf_counter() - t
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        if self._worker is None:
            # one intra-op thread: the estimators that run a model must not fight the training loop for cores
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="complexity-logger",
                                              initializer=_one_thread)
        future = self._worker.submit(self._measure, *self._snapshot(model), int(epoch), extra, waited)
        self._pending.append(future)
        return future

    def _snapshot(self, model: Any) -> tuple[list[NamedArray] | None, Context]:
        """Copies of the weights (the caller keeps training them; ``delta`` needs them later) and the context."""
        try:
            arrays: list[NamedArray] | None = [NamedArray(a.name, a.data.copy(), a.dtype) for a in open_source(model)]
        except NonFiniteError:  # diverged weights: every estimate is missing, the loop goes on
            arrays = None
        live = model if is_module(model) else None
        if live is not None and self.background and self._needs_model:
            live = copy.deepcopy(model)  # the estimator runs the model later, as it is now
        context = Context(model=live, loss_fn=self.loss_fn, previous=self._previous)
        self._previous = arrays
        return arrays, context

    def _measure(self, arrays: list[NamedArray] | None, context: Context, epoch: int, extra: dict[str, Any],
                 waited: float) -> dict[str, Any]:
        t = time.perf_counter()
        estimates = (measure_estimates(arrays, self.estimators, whole=self.whole, context=context)
                     if arrays is not None else {label: None for label in self.estimators})
        bits, details = split_estimates(estimates)
        record = {"epoch": epoch, "complexity": bits, "details": details, "estimators_s": time.perf_counter() - t,
                  **({"waited_s": waited} if self.background else {}), **extra}
        if self.path is not None:
            append_jsonl(self.path, record)
        self.records.append(record)
        return record

    def flush(self) -> list[dict[str, Any]]:
        """Wait for every pending record; their records in call order (the first estimator error is raised)."""
        done = []
        while self._pending:
            done.append(self._pending.popleft().result())
        return done

    def close(self) -> None:
        """Flush, then stop the worker thread."""
        try:
            self.flush()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None

    def __enter__(self) -> "ComplexityLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def framework_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A logged record as flat numeric metrics for a framework logger: ``complexity/EST`` (bits) and
    ``complexity/EST/KEY`` (details such as mse)."""
    out = {f"complexity/{k}": float(v) for k, v in record["complexity"].items() if v is not None}
    for label, details in record.get("details", {}).items():
        out.update({f"complexity/{label}/{k}": float(v) for k, v in details.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    return out


class _Reporter:
    """What an adapter sends to its framework: the record just logged, or with a background logger the records
    its worker has finished since (in call order), and at the end of training every remaining one."""

    def __init__(self, logger: ComplexityLogger) -> None:
        self.logger, self.waiting = logger, deque()

    def logged(self, result: Any) -> list[dict[str, Any]]:
        if not self.logger.background:
            return [result]
        self.waiting.append(result)
        done = []
        while self.waiting and self.waiting[0].done():
            done.append(self.waiting.popleft().result())
        return done

    def rest(self) -> list[dict[str, Any]]:
        self.logger.flush()
        done = [f.result() for f in self.waiting]
        self.waiting.clear()
        return done


def _late(record: dict[str, Any]) -> dict[str, float]:
    """A background record's metrics, with the epoch whose weights they describe (they arrive later)."""
    return {**framework_metrics(record), "complexity/epoch": float(record["epoch"])}


def lightning_callback(logger: ComplexityLogger, package: str = "lightning.pytorch") -> Any:
    """A Lightning ``Callback`` that logs at every training-epoch end, to our JSONL and through ``pl_module.log_dict``
    (so TensorBoard/CSV loggers show the curves).

    ``package`` is ``"lightning.pytorch"`` or ``"pytorch_lightning"``: their
    Callback classes are different, so use the one your Trainer comes from.
    With a background logger, each record goes to the Trainer's loggers when
    its worker finishes it (``complexity/epoch`` names its epoch), and the
    last ones when training ends.
    """
    import importlib

    base = importlib.import_module(package).Callback
    reporter = _Reporter(logger)

    def send(trainer: Any, records: list[dict[str, Any]]) -> None:
        for record in records:
            for lg in trainer.loggers:
                lg.log_metrics(_late(record), step=record["step"])

    class ComplexityCallback(base):  # type: ignore[misc, valid-type]
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            extra = {"step": int(trainer.global_step)} if logger.background else {}  # the step it will be reported at
            result = logger.log(pl_module, epoch=int(trainer.current_epoch), **extra)
            if not logger.background:
                pl_module.log_dict(framework_metrics(result), on_step=False, on_epoch=True)
                return
            send(trainer, reporter.logged(result))

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if logger.background:
                send(trainer, reporter.rest())

    return ComplexityCallback()


def hf_callback(logger: ComplexityLogger, trainer: Any = None) -> Any:
    """A Hugging Face ``TrainerCallback`` that logs at every epoch end (model from ``kwargs["model"]``).

    With ``trainer`` (or ``callback.trainer = trainer`` later) the figures also
    go through ``Trainer.log`` to every reporting integration; without it they
    are appended to ``state.log_history``. With a background logger, records
    are reported as its worker finishes them (``complexity/epoch`` names their
    epoch), the last ones when training ends.
    """
    from transformers import TrainerCallback

    reporter = _Reporter(logger)

    class ComplexityCallback(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = trainer

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            result = logger.log(kwargs["model"], epoch=int(round(state.epoch or 0)))
            for record in reporter.logged(result):
                hf_log(self.trainer, state, _late(record) if logger.background else framework_metrics(record))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if logger.background:
                for record in reporter.rest():
                    hf_log(self.trainer, state, _late(record))

    return ComplexityCallback()


def hf_log(trainer: Any, state: Any, metrics: dict[str, float]) -> None:
    """Metrics through ``trainer.log`` when there is a trainer, else into ``state.log_history``."""
    if trainer is not None:
        trainer.log(metrics)
    else:
        state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})
