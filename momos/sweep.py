"""``momos sweep``: a grid of runs, each an ordinary run directory, on this machine or a Ray cluster.

Every point goes through :func:`momos.trainer.train`; nothing else trains. The
sweep folder holds ``sweep.toml`` (the resolved spec, with the marker that
makes the folder ours), one run directory per point, and ``failures.jsonl``.

* **Resume.** Running the same sweep again skips finished points (they have
  ``result.json``), resumes interrupted ones from their last checkpoint (the
  exact resume of single runs) and starts missing ones. Each run keeps its own
  lock, so two sweep processes on one folder never train a point twice: a point
  another process holds is reported as in use and left to it.
* **Safety.** A folder that is neither empty nor a sweep of ours is refused;
  a changed spec is refused unless it only adds points.
* **Identical numbers.** A run's torch thread count is part of its config
  (``[resources] cpus``, default 1), so ``--jobs 1``, ``--jobs N`` and Ray give
  the same ``result.json`` and ``log.jsonl`` numbers.
* **Ray.** Each point is one Ray task with the spec's CPUs and GPUs. Run
  directories are written by the workers straight into the sweep folder, so the
  folder must be on a path every node shares (NFS, a cluster file system, or
  one machine); a worker that cannot see it fails that point and says so.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcomplexity.fileio import write_atomic

from .errors import MoMosError, RunBusyError
from .sweep_spec import FORMAT, Point, Spec, SweepSpecError

SWEEP_FILE, FAILURES = "sweep.toml", "failures.jsonl"
BACKENDS = ("local", "ray")


class SweepFailedError(MoMosError):
    """Some points failed at run time (each is in ``failures.jsonl``); the others finished."""

    exit_status = 1


@dataclass
class Outcome:
    """What one point did: trained, resumed, skipped (finished before), busy (another process) or failed."""

    name: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    test_acc: float | None = None


@dataclass
class SweepResult:
    out: Path
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def summary(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in ("trained", "resumed", "skipped", "busy", "failed") if self.count(s)]
        return f"sweep {self.out}: {len(self.outcomes)} points in {self.seconds:.1f} s: " + ", ".join(parts)


# ------------------------------------------------------------------ the sweep folder
def is_sweep(out: Path) -> bool:
    """Does ``out`` hold a ``sweep.toml`` carrying our marker?"""
    return stored_spec(out, check_keys=False) is not None


def stored_spec(out: Path, check_keys: bool = True) -> Spec | None:
    """The spec a sweep folder recorded, or None when it holds no sweep of ours."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        return None
    import tomllib

    from kcomplexity.fileio import read_text

    try:
        data = tomllib.loads(read_text(path, limit=2 ** 20, what="sweep spec"))
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT:
        return None
    return Spec.from_mapping(data, str(path), check_keys)


def prepare(out: Path, spec: Spec, points: list[Point]) -> None:
    """Make ``out`` the sweep's folder: new, or a sweep of ours whose spec this one only extends."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepSpecError(f"{out} is a file, not a sweep folder")
    failures = out / FAILURES
    if os.path.lexists(failures) and (failures.is_symlink() or not failures.is_file()):
        # record_failure appends there without following links: check it now, not at the first failure
        raise SweepSpecError(f"{failures} is not a regular file of ours (a link or a folder); move it away: "
                             "nothing was started")
    old = stored_spec(out) if out.is_dir() else None
    if old is None:
        if out.is_dir() and any(out.iterdir()):
            raise SweepSpecError(f"{out} is neither empty nor a sweep folder (no {SWEEP_FILE} of ours); choose "
                                 "another --out: nothing there was changed")
    else:
        new = {p.name: p.config for p in points}
        for p in old.points():
            if p.name not in new:
                raise SweepSpecError(f"the spec differs from the one in {out / SWEEP_FILE}: point {p.name} would "
                                     "be dropped; a changed spec may only add points (use another --out)")
            if new[p.name] != p.config:
                changed = sorted(k for k in p.config if p.config[k] != new[p.name].get(k))
                raise SweepSpecError(f"the spec differs from the one in {out / SWEEP_FILE}: point {p.name} would "
                                     f"change ({', '.join(changed)}); a changed spec may only add points")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepSpecError(f"cannot create {out}: {exc.strerror or exc}") from None
    write_atomic(out / SWEEP_FILE, spec.to_toml())


def record_failure(out: Path, outcome: Outcome) -> None:
    """Append one failed point to ``failures.jsonl`` (the driver is its only writer)."""
    line = json.dumps({"point": outcome.name, "error": outcome.error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    fd = os.open(Path(out) / FAILURES, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


# ------------------------------------------------------------------ one point (runs in a worker)
def run_point(out: str, name: str, config: dict[str, Any], trackers: dict[str, Any] | None = None) -> Outcome:
    """Train, resume or skip one point; never raises (a failure is an Outcome)."""
    from . import rundir

    t0 = time.perf_counter()
    run_dir = Path(out) / name
    try:
        if not (Path(out) / SWEEP_FILE).is_file():
            raise MoMosError(f"the sweep folder {out} is not visible here; with Ray it must be on a path every "
                             "node shares")
        from .trainer import train

        tracker_list = _trackers(trackers or {}, Path(out).name, name)
        same = rundir.is_run(run_dir) and rundir.stored_config(run_dir) == config
        finished = rundir.read_result(run_dir) if same else None
        if finished is not None:
            status, result = "skipped", finished
        elif same and rundir.checkpoint_epoch(run_dir) is not None:
            status, result = "resumed", train({}, run_dir, resume=True, quiet=True, trackers=tracker_list).to_json()
        else:  # new, or a start that failed before its first epoch; train() refuses anything else
            status, result = "trained", train(config, run_dir, quiet=True, trackers=tracker_list).to_json()
        return Outcome(name, status, time.perf_counter() - t0, test_acc=result.get("test_acc"))
    except RunBusyError as exc:
        return Outcome(name, "busy", time.perf_counter() - t0, error=str(exc))
    except Exception as exc:  # any failure of one point is recorded; the other points go on
        first = str(exc).splitlines()[0] if str(exc) else ""
        return Outcome(name, "failed", time.perf_counter() - t0, error=f"{type(exc).__name__}: {first}")


def _trackers(options: dict[str, Any], sweep_name: str, point: str, outputs: Path | None = None) -> list[Any]:
    from . import trackers

    tb = options.get("tensorboard")
    return trackers.make(tensorboard=Path(tb) / point if tb else None, mlflow=options.get("mlflow"),
                         run_name=point, experiment=sweep_name or "momos", outputs=outputs)


# ------------------------------------------------------------------ backends
def _worker_init() -> None:
    from .distributed import die_with_parent

    die_with_parent()  # a sweep killed with kill -9 takes its workers with it; reruns resume their points
    # torch and the project once per worker, while the driver still validates the spec and trains its first point
    import kcomplexity.estimators  # noqa: F401
    from . import trainer  # noqa: F401


#: (workers, pool): the sweep's worker processes, kept for the next sweep of this process with as many workers
_WARM: list[Any] = []


def workers_for(n: int) -> Any:
    """A process pool of ``n`` sweep workers that have imported torch and the trainer: the one the last sweep of
    this process used when it had as many workers, else a new one (started now, from this thread)."""
    from kcomplexity import workers

    if _WARM and _WARM[0] == n and not getattr(_WARM[1], "_broken", False):
        return _WARM[1]
    close_workers()
    # spawn, not fork: the driver has imported torch, whose thread pools do not survive a fork
    _WARM[:] = [n, workers.processes(n, start_method="spawn", initializer=_worker_init)]
    return _WARM[1]


def close_workers() -> None:
    """Stop the worker processes kept for later sweeps (done at exit on its own)."""
    if _WARM:
        pool = _WARM[1]
        _WARM.clear()
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(close_workers)


def _local(out: Path, points: list[Point], jobs: int, trackers: dict[str, Any]) -> Iterator[Outcome]:
    """Points on this machine: the driver trains too, beside ``jobs - 1`` worker processes.

    The driver has torch imported already, so it starts at once; the workers
    (:func:`workers_for`) import torch and the trainer once, when they start,
    and a later sweep of the same process reuses them warm. They are fed from
    the same queue by a small feeder thread, so none waits for the driver's
    point to finish before taking the next one.
    """
    todo = deque(points)
    if jobs == 1:
        while todo:
            p = todo.popleft()
            yield run_point(str(out), p.name, p.config, trackers)
        return
    import queue
    import threading
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from kcomplexity import workers

    lock, results, stop = threading.Lock(), queue.Queue(), threading.Event()

    def take() -> Point | None:
        with lock:
            return todo.popleft() if todo else None

    pool = workers_for(jobs - 1)
    try:
        def feed() -> None:  # keeps every worker busy while the driver trains its own points
            running: dict[Any, Point] = {}
            while not stop.is_set():
                while len(running) < jobs - 1 and (p := take()) is not None:
                    running[pool.submit(run_point, str(out), p.name, p.config, trackers)] = p
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    p = running.pop(fut)
                    try:
                        results.put(fut.result())
                    except BrokenProcessPool as exc:  # a worker was killed (e.g. out of memory)
                        results.put(Outcome(p.name, "failed", error=f"worker process died: {exc}"))
            results.put(None)

        feeder = threading.Thread(target=feed, name="sweep-feeder", daemon=True)
        feeder.start()
        fed_all = False
        try:
            while (p := take()) is not None:
                yield run_point(str(out), p.name, p.config, trackers)
                while not results.empty():
                    r = results.get()
                    fed_all = fed_all or r is None
                    if r is not None:
                        yield r
            while not fed_all:
                r = results.get()
                fed_all = r is None
                if r is not None:
                    yield r
        finally:
            stop.set()
    except BaseException:  # an interrupted or failed sweep takes its workers down with it
        _WARM.clear()
        workers.abandon(pool)
        raise


def _connect_ray(address: str | None) -> Any:
    """The ray module, connected to the cluster at ``address`` (or a local one); one-line errors otherwise."""
    try:
        import ray
    except ImportError:
        raise MoMosError("--backend ray needs Ray: pip install 'kcomplexity[ray]'") from None
    if not ray.is_initialized():
        _probe(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:  # no cluster there: nothing was started
            raise MoMosError(f"cannot reach a Ray cluster at {address or '(local)'}: "
                             f"{str(exc).splitlines()[0][:300]}") from None
    return ray


def _ray(out: Path, points: list[Point], resources: dict[str, float], address: str | None,
         trackers: dict[str, Any]) -> Iterator[Outcome]:
    ray = _connect_ray(address)
    task = ray.remote(num_cpus=resources["cpus"], num_gpus=resources["gpus"], max_retries=0)(run_point)
    pending = {task.remote(str(out.resolve()), p.name, p.config, trackers): p for p in points}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            point = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as exc:  # the task's worker died
                yield Outcome(point.name, "failed", error=f"Ray task failed: {str(exc).splitlines()[0][:300]}")


def _probe(address: str | None, timeout: float = 5.0) -> None:
    """A host:port cluster address must answer a TCP connect within ``timeout`` seconds: Ray itself retries an
    unreachable address for minutes. None and "auto" (find or start a local cluster) are left to Ray."""
    if not address or address == "auto":
        return
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MoMosError(f"cannot reach a Ray cluster at {address}: {why}; nothing was started") from None


# ------------------------------------------------------------------ the driver
def sweep(spec: Spec, out: str | Path, jobs: int = 1, backend: str = "local", address: str | None = None,
          quiet: bool = False, tensorboard: str | None = None, mlflow: str | None = None) -> SweepResult:
    """Run every point of ``spec`` under ``out``; SweepFailedError at the end if any point failed.

    ``jobs`` points run at once in separate processes (local backend). Each
    finished point prints one line; a bar shows the overall progress and ETA.
    """
    from tqdm.auto import tqdm

    if backend not in BACKENDS:
        raise SweepSpecError(f"unknown backend '{backend}'; available: {', '.join(BACKENDS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepSpecError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    cores = os.cpu_count() or 1
    if backend == "local" and jobs > cores:
        raise SweepSpecError(f"--jobs {jobs} exceeds this machine's {cores} cores; each run needs at least one")
    out = Path(out)
    points = spec.points()  # every point validated before any starts
    if backend == "local" and min(jobs, len(points)) > 1:
        workers_for(min(jobs, len(points)) - 1)  # they import torch while the driver prepares the folder
    if tensorboard or mlflow:  # a missing extra, a store that is not MLflow's or is inside the sweep fail now
        _trackers({"tensorboard": tensorboard, "mlflow": mlflow}, out.name, "check", outputs=out)
    if backend == "ray":
        _connect_ray(address)  # an unreachable cluster fails before anything is written
    prepare(out, spec, points)
    options = {"tensorboard": tensorboard, "mlflow": mlflow}
    result, t0 = SweepResult(out), time.perf_counter()
    outcomes = (_local(out, points, min(jobs, len(points)), options) if backend == "local"
                else _ray(out, points, spec.resources, address, options))
    bar = tqdm(total=len(points), unit="point", desc="sweep", disable=quiet, file=sys.stderr)
    for i, outcome in enumerate(outcomes, 1):
        result.outcomes.append(outcome)
        if outcome.status == "failed":
            record_failure(out, outcome)
        if not quiet:
            acc = f", test accuracy {outcome.test_acc:.4f}" if outcome.test_acc is not None else ""
            why = f": {outcome.error}" if outcome.error else ""
            bar.write(f"[{i}/{len(points)}] {outcome.name}: {outcome.status} in {outcome.seconds:.1f} s{acc}{why}",
                      file=sys.stderr)
        bar.update(1)
    bar.close()
    result.seconds = time.perf_counter() - t0
    failed = result.count("failed")
    if failed:
        raise SweepFailedError(f"{failed} of {len(points)} points failed (see {out / FAILURES}); "
                               "the others finished; rerun the same command to retry the failed ones")
    return result


def point_dirs(out: Path) -> list[tuple[str, dict[str, Any], Path]]:
    """Every point of a sweep folder's recorded spec: name, axis values and run directory (no torch needed)."""
    spec = stored_spec(out, check_keys=False)
    if spec is None:
        raise SweepSpecError(f"{out} is not a sweep folder (no {SWEEP_FILE} of ours)")
    return [(name, axes, Path(out) / name) for name, axes in spec.named()]


__all__ = ["sweep", "Spec", "SweepResult", "Outcome", "SweepFailedError", "is_sweep", "stored_spec", "point_dirs"]
