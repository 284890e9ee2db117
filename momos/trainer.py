"""Train a baseline, QAT, MoMos or MoMos+QAT model and log every complexity estimate every epoch.

Per epoch: train -> MoMos projection (after the optimiser steps) -> validate
-> checkpoint -> estimators. The estimators of epoch e run in a background
thread while epoch e+1 trains; its log line is written when they finish.
Line 0 is the initialisation. A run killed at any moment resumes with
``resume=True``: the log keeps each epoch exactly once.
"""
from __future__ import annotations

import copy
import json
import random
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

import kcomplexity as kc
from kcomplexity.callbacks import append_jsonl, measure_estimates, split_estimates
from kcomplexity.estimators import Context
from kcomplexity.sources import open_source

from . import checkpoint, data, distributed, models, qat, rundir, two_part
from .config import TrainConfig
from .errors import RunError
from .projection import MoMos, Projection, check_fits
from .rundir import read_log

#: estimators that need a loss (``intrinsic``) get it on this many training examples, a fixed seeded subset
LOSS_EXAMPLES = 2048


@dataclass
class RunResult:
    """What a finished run reports; the same is in ``RUN_DIR/result.json``."""

    run_dir: Path
    test_acc: float
    test_acc_final: float
    best_epoch: int
    best_val_acc: float
    final: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "test_acc": self.test_acc, "test_acc_final": self.test_acc_final,
                "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc, "final": self.final}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("kcomplexity", "torch", "numpy", "scipy", "zstandard", "pybdm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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
        # the module trains through DDP on several ranks; projection, checkpoints and measurement use the module
        self.net = (torch.nn.parallel.DistributedDataParallel(self.model) if self.ranks.world > 1 else self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = self._optimizer(params)
        self.sched = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(cfg.epochs, 1))
                      if cfg.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: 1.0))
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.momos = (MoMos(cfg.s, cfg.capacity, cfg.k, cfg.force_zero, seed=cfg.seed, scope=cfg.scope)
                      if cfg.uses_momos else None)
        self.estimators = kc.estimators.resolve(cfg.estimators) if cfg.estimators else {}
        self.preflight()
        needs = {n for est in self.estimators.values() for n in est.needs}
        self.loss_fn = fixed_loss(self.data.train, cfg.seed, self.device) if "loss_fn" in needs else None
        self.keep_model, self.keep_previous = "model" in needs, "previous" in needs
        self.previous: dict[str, torch.Tensor] | None = None  # weights of the last logged epoch (for delta)
        self.best = {"epoch": -1, "val_acc": -1.0, "val_loss": float("inf")}
        self.log_path = run_dir / "log.jsonl"
        self.ckpt_root = run_dir / "checkpoints"

    def preflight(self) -> None:
        """Settings that do not fit this model fail here, before the run directory is touched."""
        sizes = [p.numel() for p in self.model.parameters() if p.requires_grad]
        if self.momos is not None:
            check_fits(self.cfg.s, sizes)
        for est in self.estimators.values():
            est.check_sizes(sizes)

    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, c.beta2))

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        x, y = self.data.train.x, self.data.train.y
        batches = self.batches()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.cfg.epochs}", unit="batch", leave=False,
                   disable=self.quiet, file=sys.stderr)
        for idx in bar:
            if self.ranks.world > 1 and len(idx) >= self.ranks.world:
                idx = idx[self.ranks.rank::self.ranks.world]  # this rank's share of the global batch
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            self.opt.zero_grad(set_to_none=True)
            out = self.net(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            self.opt.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        self.sched.step()
        total_loss, correct, seen = self.ranks.sum([total_loss, correct, seen])
        return total_loss / seen, correct / seen

    def batches(self) -> list[torch.Tensor]:
        """This epoch's index batches: one shuffled pass, or ``steps_per_epoch`` batches drawn from
        as many fresh shuffles as they need (a batch as large as the data set is full-batch training)."""
        n, bs, steps = len(self.data.train), self.cfg.batch_size, self.cfg.steps_per_epoch
        if steps is None:
            return list(torch.randperm(n, generator=self.shuffle).split(bs))
        bs = min(bs, n)
        per_pass = n // bs
        order = torch.cat([torch.randperm(n, generator=self.shuffle)[: per_pass * bs]
                           for _ in range(-(-steps // per_pass))])
        return list(order.split(bs)[:steps])

    def evaluate(self, split: data.Split) -> tuple[float, float]:
        return loss_and_accuracy(self.model, split.x, split.y, self.device)

    # ------------------------------------------------------------------ complexity
    def snapshot(self) -> dict[str, torch.Tensor]:
        """The weights the model computes with (q-bit quantised under QAT), copied to the CPU."""
        return {k: v.detach().to("cpu", copy=True) for k, v in qat.effective_weights(self.model).items()}

    def latent_snapshot(self) -> dict[str, torch.Tensor]:
        """The latent float weights QAT trains and MoMos projects (what the official code measures)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in qat.latent_weights(self.model).items()}

    def job(self, weights: dict[str, torch.Tensor], mosaic: Any, previous: dict[str, torch.Tensor] | None) -> Any:
        """Everything the estimator thread needs for this epoch, copied now: () -> (record fields, seconds).

        ``weights`` is this epoch's :meth:`snapshot`. The effective weights get the model copy, the fixed loss, the previous weights and q; the mosaic
        describes the latent weights, so under QAT it goes with the latent measurement, logged as
        ``complexity_latent`` / ``details_latent`` beside the effective ``complexity`` / ``details``.
        """
        qat_run = self.cfg.uses_qat
        context = Context(model=copy.deepcopy(self.model) if self.keep_model else None, loss_fn=self.loss_fn,
                          previous=list(open_source(previous, allow_nonfinite=True)) if previous is not None else None,
                          extra={"q": self.cfg.q} if qat_run else {"mosaic": mosaic})
        latent = self.latent_snapshot() if qat_run else None
        return lambda: self.complexity(weights, context, latent, Context(extra={"mosaic": mosaic, "q": self.cfg.q}))

    def complexity(self, weights: dict[str, torch.Tensor], context: Context,
                   latent: dict[str, torch.Tensor] | None = None, latent_context: Context | None = None
                   ) -> tuple[dict[str, Any], float]:
        """Every requested estimator through the registry: (record fields, seconds)."""
        t = time.perf_counter()
        if not self.estimators:
            return {"complexity": {}, "details": {}}, 0.0
        bits, details = split_estimates(measure_estimates(weights, self.estimators, whole=True, context=context))
        fields: dict[str, Any] = {"complexity": bits, "details": details}
        if latent is not None:
            fields["complexity_latent"], fields["details_latent"] = split_estimates(
                measure_estimates(latent, self.estimators, whole=True, context=latent_context))
        return fields, time.perf_counter() - t

    def write(self, record: dict[str, Any], result: tuple[dict[str, Any], float]) -> None:
        record = dict(record)
        fields, record["time"]["estimators_s"] = result
        record.update(fields)
        append_jsonl(self.log_path, record)
        self.track("log", record)
        if not self.quiet:
            c = ", ".join(f"{k} {v:,.0f}" for k, v in record["complexity"].items() if v is not None)
            tqdm.write(f"epoch {record['epoch']:>3}: val_acc {record['val_acc']:.4f} val_loss {record['val_loss']:.4f}"
                       f" | {c} bits", file=sys.stderr)

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
        return {"epoch": epoch, "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_shuffle": self.shuffle.get_state(),
                "momos": self.momos.state_dict() if self.momos else {}, "best": json.dumps(self.best),
                "pending": json.dumps(pending)}

    def restore(self, pool: ThreadPoolExecutor) -> int:
        epoch, state, folder = checkpoint.load(self.ckpt_root, self.model)
        try:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_torch"])
            self.shuffle.set_state(state["rng_shuffle"])
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
        records = read_log(self.log_path, repair=True)
        rundir.check_log_matches(records, epoch, self.log_path)
        logged = {r["epoch"] for r in records}
        previous = checkpoint.load_previous(folder)
        weights = self.snapshot()
        if pending["epoch"] not in logged:
            mosaic = None
            if (folder / "mosaic.safetensors").is_file():
                from .mosaic import Mosaic

                mosaic = Mosaic.load(folder / "mosaic.safetensors")
            # on the estimator thread, as in an uninterrupted run, so the numbers are the same
            self.write(pending, pool.submit(self.job(weights, mosaic, previous)).result())
        if self.keep_previous:
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
                record, mosaic = self.one_epoch(epoch)
                if not self.ranks.main:  # rank 0 alone writes the run directory and measures
                    continue
                if waiting is not None:
                    self.write(waiting[0], waiting[1].result())
                if epoch >= 1 and self.better(record):
                    self.best = {"epoch": epoch, "val_acc": record["val_acc"], "val_loss": record["val_loss"]}
                    checkpoint.save_best(self.run_dir, self.model, self.best)
                checkpoint.save(self.ckpt_root, epoch, self.model, self.state(epoch, record), mosaic, self.previous)
                weights = self.snapshot()
                waiting = (record, pool.submit(self.job(weights, mosaic, self.previous)))
                if self.keep_previous:
                    self.previous = weights
            if waiting is not None:
                self.write(waiting[0], waiting[1].result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.finish() if self.ranks.main else None

    def one_epoch(self, epoch: int) -> tuple[dict[str, Any], Any]:
        t0 = time.perf_counter()
        lr = self.opt.param_groups[0]["lr"]
        if epoch == 0:
            train_loss, train_acc = self.evaluate(self.data.train)
        else:
            train_loss, train_acc = self.train_epoch(epoch)
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
            "projection": proj.stats() if proj is not None else None, **self.weight_stats(),
            "time": {"train_s": t1 - t0, "project_s": t2 - t1, "val_s": t3 - t2},
        }
        if self.ranks.world > 1:  # evidence that every rank holds the same weights after the projection
            record["rank_checksums"] = self.ranks.checksums(self.model)
        return record, (proj.mosaic if proj is not None else None)

    @torch.no_grad()
    def weight_stats(self) -> dict[str, float]:
        """The official run's other per-epoch metrics, over all trainable (latent) weights: the fraction
        of exact zeros and the L2 norm."""
        params = [p.detach() for p in self.model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in params)
        zeros = sum(int((p == 0).sum()) for p in params)
        norm = float(torch.sqrt(sum(p.double().square().sum() for p in params)))
        return {"sparsity": zeros / n, "l2_norm": norm}

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
                                                              device=self.device))
            except kc.errors.KComplexityError as exc:  # e.g. a diverged run's NaN weights: the run still finishes
                if not self.quiet:
                    print(f"{self.run_dir}: no two-part code ({exc})", file=sys.stderr)
        log = read_log(self.log_path)
        result = RunResult(self.run_dir, test_acc, final_acc, int(best["epoch"]), float(best["val_acc"]),
                           log[-1] if log else {})
        rundir.write_result(self.run_dir, result.to_json())
        self.track("finish", self.run_dir, result.to_json())
        if not self.quiet:
            print(f"{self.run_dir}: test accuracy {test_acc:.4f} (best epoch {best['epoch']}), "
                  f"final-epoch model {final_acc:.4f}", file=sys.stderr)
        return result


def fixed_loss(split: data.Split, seed: int, device: torch.device) -> Any:
    """``loss_fn(model) -> float``: mean cross-entropy (nats) on a fixed seeded subset of at most LOSS_EXAMPLES."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:LOSS_EXAMPLES].sort().values
    x, y = split.x[order], split.y[order]
    return lambda model: loss_and_accuracy(model, x, y, device)[0]


@torch.no_grad()
def loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
                      ) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` in eval mode, in batches of 1,024."""
    model.eval()
    loss, correct = 0.0, 0
    for lo in range(0, len(y), 1024):
        xb, yb = x[lo:lo + 1024].to(device), y[lo:lo + 1024].to(device)
        out = model(xb)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


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
        cfg = TrainConfig.from_json(rundir.stored_config(run_dir))
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


def load_data(cfg: TrainConfig, download: bool | None = None) -> data.DataSet:
    """The data set of a run, split as the run splits it."""
    return data.load(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, data_dir=cfg.data_dir,
                     download=cfg.download if download is None else download, limit=cfg.limit,
                     modulus=cfg.modulus, train_fraction=cfg.train_fraction)


def build_model(cfg: TrainConfig, ds: data.DataSet, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The run's model for its data (or ``model``, your own), with QAT attached as the run trains it."""
    if model is None:
        model = models.build(cfg.model, ds.input_shape, ds.num_classes, cfg.width, tokens=ds.tokens)
    if cfg.uses_qat:
        qat.attach(model, cfg.q, weights_only=not cfg.qat_biases)
    return model


def load_run_model(run_dir: str | Path) -> tuple[torch.nn.Module, data.DataSet]:
    """A run's model holding its last checkpoint's weights, and its data set (never downloaded)."""
    run_dir = Path(run_dir)
    cfg = TrainConfig.from_json(rundir.stored_config(run_dir)).resolved()
    ds = load_data(cfg, download=False)
    model = build_model(cfg, ds)
    checkpoint.load(run_dir / "checkpoints", model)
    return model, ds


def rundir_result(run_dir: Path) -> RunResult:
    """The RunResult rank 0 wrote to ``result.json``."""
    r = rundir.read_result(run_dir)
    if r is None:
        raise RunError(f"{run_dir} has no result.json: the ranks did not finish")
    return RunResult(Path(r["run_dir"]), r["test_acc"], r["test_acc_final"], r["best_epoch"], r["best_val_acc"],
                     r["final"])


__all__ = ["train", "RunResult", "TrainConfig", "read_log"]
