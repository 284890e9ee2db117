"""Train a baseline, QAT, MoMos or MoMos+QAT model and log every complexity estimate every epoch (or every
``measure_every`` epochs).

Per epoch: train -> MoMos projection (after the optimiser steps) -> validate
-> checkpoint -> estimators. The estimators of epoch e run in a background
thread while epoch e+1 trains; its log line is written when they finish.
Line 0 is the initialisation. A run killed at any moment resumes with
``resume=True``: the log keeps each epoch exactly once.
"""
from __future__ import annotations

import json
import random
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import kcomplexity as kc

from . import augment, checkpoint, data, distributed, evaluation, rundir, two_part
from .config import TrainConfig
from .errors import RunError
from .loop import Loop, weight_stats
from .measurement import Measurement
from .projection import MoMos, Projection, check_fits
from .rundir import read_log
from .runs import RunResult, architecture, build_model, load_data, rundir_result, versions


class _Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, quiet: bool, model: torch.nn.Module | None,
                 trackers: list[Any] | None = None) -> None:
        self.ranks = distributed.current()
        self.trackers = list(trackers or []) if self.ranks.main else []
        self.cfg, self.run_dir, self.quiet = cfg, run_dir, quiet or not self.ranks.main
        self.device = torch.device(distributed.rank_device(cfg.device, self.ranks.rank))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.data = load_data(cfg)
        self.model = build_model(cfg, self.data, model).to(self.device)
        self.loop = Loop(cfg, self.model, self.data.train, self.device, self.ranks, self.quiet,
                         augment=augment.build(cfg.augment, self.data))
        self.momos = (MoMos(cfg.s, cfg.capacity, cfg.k, cfg.force_zero, seed=cfg.seed, scope=cfg.scope)
                      if cfg.uses_momos else None)
        self.estimators = kc.estimators.resolve(cfg.estimators) if cfg.estimators else {}
        self.preflight()
        loss_fn = (evaluation.fixed_loss(self.data.train, cfg.seed, self.device)
                   if Measurement.needs_loss(self.estimators) else None)
        self.measure = Measurement(cfg, self.model, self.estimators, loss_fn)
        self.previous: dict[str, torch.Tensor] | None = None  # weights of the last logged epoch (for delta)
        self.best = {"epoch": -1, "val_acc": -1.0, "val_loss": float("inf")}
        self.log = rundir.RunLog(run_dir)
        self.ckpt_root = run_dir / "checkpoints"

    def preflight(self) -> None:
        """Settings that do not fit this model fail here, before the run directory is touched."""
        sizes = [p.numel() for p in self.model.parameters() if p.requires_grad]
        if self.momos is not None:
            check_fits(self.cfg.s, sizes)
        for est in self.estimators.values():
            est.check_sizes(sizes)

    def evaluate(self, split: data.Split) -> tuple[float, float]:
        with self.loop.precision.autocast():  # in the run's precision, as it trains
            return evaluation.loss_and_accuracy(self.model, split.x, split.y, self.device)

    # ------------------------------------------------------------------ complexity
    def write(self, record: dict[str, Any], result: tuple[dict[str, Any], float]) -> None:
        record = dict(record)
        fields, record["time"]["estimators_s"] = result
        record.update(fields)
        self.log.append(record)
        self.track("log", record)
        if not self.quiet:
            c = ", ".join(f"{k} {v:,.0f}" for k, v in record["complexity"].items() if v is not None)
            tqdm.write(f"epoch {record['epoch']:>3}: val_acc {record['val_acc']:.4f} val_loss {record['val_loss']:.4f}"
                       + (f" | {c} bits" if c else ""), file=sys.stderr)

    def track(self, event: str, *args: Any) -> None:
        """Send an event to every tracker; one that fails is reported and dropped, the run goes on."""
        for tracker in list(self.trackers):
            try:
                getattr(tracker, event)(*args)
            except Exception as exc:  # a tracker's store going away must not cost the run
                if event == "start":
                    raise
                warnings.warn(f"{type(tracker).__name__} stopped receiving records: {exc}", stacklevel=2)
                self.trackers.remove(tracker)

    def better(self, record: dict[str, Any]) -> bool:
        """Does this epoch beat the best so far by the configured figure (highest val_acc or lowest val_loss)?"""
        if self.cfg.best_by == "val_loss":
            return record["val_loss"] < self.best.get("val_loss", float("inf"))
        return record["val_acc"] > self.best["val_acc"]

    def state(self, epoch: int, pending: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": epoch, **self.loop.state(), "momos": self.momos.state_dict() if self.momos else {},
                "best": json.dumps(self.best), "pending": json.dumps(pending)}

    def restore(self, pool: ThreadPoolExecutor) -> int:
        epoch, state, folder = checkpoint.load(self.ckpt_root, self.model)
        try:
            self.loop.load_state(state)
            if self.momos:
                self.momos.load_state_dict(state["momos"])
            self.best = json.loads(state["best"])
            pending = json.loads(state["pending"])
            if not (isinstance(self.best, dict) and isinstance(pending, dict) and isinstance(pending.get("epoch"), int)):
                raise ValueError("best/pending are not epoch records")
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, RecursionError) as exc:
            raise RunError(f"corrupt checkpoint state in {folder}: {exc}") from None
        if not self.ranks.main:
            return epoch
        records = self.log.read(repair=True)
        self.log.check_matches(records, epoch)
        logged = {r["epoch"] for r in records}
        previous = checkpoint.load_previous(folder)
        weights = self.measure.snapshot()
        if pending["epoch"] not in logged:
            mosaic = None
            if (folder / "mosaic.safetensors").is_file():
                from .mosaic import Mosaic

                mosaic = Mosaic.load(folder / "mosaic.safetensors")
            # on the estimator thread, as in an uninterrupted run, so the numbers are the same
            self.write(pending, pool.submit(self.measure.job(pending["epoch"], weights, mosaic, previous)).result())
        if self.measure.keep_previous:
            self.previous = weights
        return epoch

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool) -> RunResult | None:
        # one intra-op thread for estimators that run the model (intrinsic): two OpenMP teams on the
        # same cores slowed training 2.4x; the setting is per thread, so training keeps its threads
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="estimators", initializer=torch.set_num_threads,
                                  initargs=(1,))
        waiting: tuple[dict[str, Any], Future] | None = None
        try:
            self.track("start", self.run_dir, self.cfg.to_json())
            start = self.restore(pool) + 1 if resume else 0
            for epoch in range(start, self.cfg.epochs + 1):
                began = time.perf_counter()
                record, mosaic = self.one_epoch(epoch)
                if not self.ranks.main:  # rank 0 alone writes the run directory and measures
                    continue
                if waiting is not None:
                    self.write(waiting[0], waiting[1].result())
                if epoch >= 1 and self.better(record):
                    self.best = {"epoch": epoch, "val_acc": record["val_acc"], "val_loss": record["val_loss"]}
                    checkpoint.save_best(self.run_dir, self.model, self.best)
                checkpoint.save(self.ckpt_root, epoch, self.model, self.state(epoch, record), mosaic, self.previous)
                weights = self.measure.snapshot()
                job = self.measure.job(epoch, weights, mosaic, self.previous)
                # the epoch's whole cycle: training, the wait for the previous epoch's estimators, the checkpoint
                record["time"]["epoch_s"] = time.perf_counter() - began
                waiting = (record, pool.submit(job))
                if self.measure.keep_previous:
                    self.previous = weights
            if waiting is not None:
                self.write(waiting[0], waiting[1].result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.finish() if self.ranks.main else None

    def one_epoch(self, epoch: int) -> tuple[dict[str, Any], Any]:
        t0 = time.perf_counter()
        lr = self.loop.lr
        if epoch == 0:
            train_loss, train_acc = self.evaluate(self.data.train)
        else:
            train_loss, train_acc = self.loop.train_epoch(epoch)
        t1 = time.perf_counter()
        proj: Projection | None = None
        if self.momos is not None and epoch >= 1:
            # rank 0 projects and broadcasts the weights: measured cheaper than the same seeded projection on
            # every rank (which also keeps them identical) when ranks share CPU cores
            proj = self.momos(self.model) if self.ranks.main else None
            self.ranks.broadcast_parameters(self.model)
        t2 = time.perf_counter()
        val_loss, val_acc = self.evaluate(self.data.val)
        t3 = time.perf_counter()
        record = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
            "lr": lr, "n_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "projection": proj.stats() if proj is not None else None, **weight_stats(self.model),
            "time": {"train_s": t1 - t0, "project_s": t2 - t1, "val_s": t3 - t2},
        }
        if self.ranks.world > 1:  # evidence that every rank holds the same weights after the projection
            record["rank_checksums"] = self.ranks.checksums(self.model)
        return record, (proj.mosaic if proj is not None else None)

    def finish(self) -> RunResult:
        final_loss, final_acc = self.evaluate(self.data.test)
        best = self.best
        if best["epoch"] >= 1 and (self.run_dir / "best.safetensors").is_file():
            from safetensors.torch import load_file

            current = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(load_file(str(self.run_dir / "best.safetensors")))
            test_acc = self.evaluate(self.data.test)[1]
            self.model.load_state_dict(current)
        else:
            test_acc = final_acc
        if self.ranks.main:
            try:
                two_part.write(self.run_dir, two_part.measure(self.model, self.data.train, self.data.test,
                                                              device=self.device, architecture=architecture(self.cfg)))
            except kc.errors.KComplexityError as exc:  # e.g. a diverged run's NaN weights: the run still finishes
                if not self.quiet:
                    print(f"{self.run_dir}: no two-part code ({exc})", file=sys.stderr)
        log = self.log.read()
        result = RunResult(self.run_dir, test_acc, final_acc, int(best["epoch"]), float(best["val_acc"]),
                           log[-1] if log else {})
        rundir.write_result(self.run_dir, result.to_json())
        self.track("finish", self.run_dir, result.to_json())
        if not self.quiet:
            print(f"{self.run_dir}: test accuracy {test_acc:.4f} (best epoch {best['epoch']}), "
                  f"final-epoch model {final_acc:.4f}", file=sys.stderr)
        return result


def train(config: TrainConfig | dict[str, Any], run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, model: torch.nn.Module | None = None, trackers: list[Any] | None = None) -> RunResult:
    """Train one run into ``run_dir`` (config.json, log.jsonl, checkpoints/, best.safetensors, result.json).

    ``model`` replaces the named model with your own ``nn.Module``; ``trackers``
    (:mod:`momos.trackers`) receive every record as it is logged.
    With ``resume=True`` the stored config is used and training continues
    after the last completed epoch.
    """
    run_dir = Path(run_dir)
    if resume:
        rundir.check_out(run_dir, resume, overwrite)
        cfg = TrainConfig.from_stored(rundir.stored_config(run_dir))
    else:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_json(dict(config))
    cfg = cfg.resolved()
    rundir.check_out(run_dir, resume, overwrite, cfg.to_json())
    if cfg.devices > 1 and distributed.current().world == 1:
        return _train_ranks(cfg, run_dir, resume, overwrite, quiet, model, trackers)
    # the lock first, so a second process is refused at once; then data, model and settings are checked
    # (failing before any write), then the folder is prepared
    with rundir.locked(run_dir), _threads(cfg.threads):
        trainer = _Trainer(cfg, run_dir, quiet, model, trackers)
        resume = rundir.prepare(run_dir, cfg.to_json(), versions(), resume, overwrite)
        return trainer.run(resume)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to the run's own for its duration, then put back: the setting is
    process-wide, and a run must not change the numbers of whatever the caller trains next."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_ranks(cfg: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, quiet: bool,
                 model: torch.nn.Module | None, trackers: list[Any] | None = None) -> RunResult:
    """``cfg.devices`` ranks on this machine (or those torchrun started): rank 0 holds the lock and writes."""
    if distributed.under_torchrun():
        ranks = distributed.init_from_env(cfg.device)
        if ranks.world != cfg.devices:
            raise RunError(f"torchrun started {ranks.world} processes but the config asks for devices={cfg.devices}")
        if ranks.main:
            with rundir.locked(run_dir):
                trainer = _Trainer(cfg, run_dir, quiet, model, trackers)
                resume = ranks.broadcast_flag(rundir.prepare(run_dir, cfg.to_json(), versions(), resume, overwrite))
                return trainer.run(resume)
        _Trainer(cfg, run_dir, quiet, model).run(ranks.broadcast_flag(False))
        return rundir_result(run_dir)
    with rundir.locked(run_dir):
        _Trainer(cfg, run_dir, True, model)  # validates data, model and settings before anything is written
        resume = rundir.prepare(run_dir, cfg.to_json(), versions(), resume, overwrite)
        distributed.spawn(_rank_main, cfg.devices, cfg.device, (cfg, run_dir, resume, quiet, model, trackers))
    return rundir_result(run_dir)


def _rank_main(cfg: TrainConfig, run_dir: Path, resume: bool, quiet: bool, model: torch.nn.Module | None,
               trackers: list[Any] | None = None) -> None:
    _Trainer(cfg, run_dir, quiet, model, trackers).run(resume)


__all__ = ["train", "RunResult", "TrainConfig", "read_log"]
