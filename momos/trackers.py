"""Send a run's per-epoch records to experiment trackers people already watch: TensorBoard and MLflow.

A tracker sees what the run log sees, as it is written: ``start`` before the
first epoch this process trains, ``log`` for each record appended to
``log.jsonl``, ``finish`` with the result. Numbers are flattened to
``group/name`` tags (``complexity/lzma``, ``time/train_s``); bits stay bits.
A resumed run sends the epochs it trains from then on. Both libraries are
optional extras (``pip install 'kcomplexity[trackers]'``).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .errors import MoMosError

#: the MLflow store a bare ``--mlflow`` uses: a real local database that ``mlflow ui`` opens
DEFAULT_MLFLOW_URI = "sqlite:///mlruns.db"


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a log record, flattened to ``a/b`` names (the epoch itself is the step)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
            if math.isfinite(value):
                out[name] = float(value)
    return out


class TensorBoard:
    """Event files under ``log_dir`` through ``torch.utils.tensorboard`` (one scalar per tag and epoch)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MoMosError("--tensorboard needs the tensorboard package: pip install 'kcomplexity[trackers]'"
                             ) from None
        self._cls, self.log_dir, self.writer = SummaryWriter, Path(log_dir), None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.writer = self._cls(log_dir=str(self.log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def finish(self, run_dir: Path, result: dict[str, Any]) -> None:
        for tag, value in scalars({"result": {k: v for k, v in result.items() if k != "final"}}).items():
            self.writer.add_scalar(tag, value, 0)
        self.writer.close()


class MLflow:
    """An MLflow run per training run: parameters, per-epoch metrics, and result.json + a plot as artifacts."""

    def __init__(self, uri: str = DEFAULT_MLFLOW_URI, experiment: str = "momos", run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MoMosError("--mlflow needs the mlflow package: pip install 'kcomplexity[trackers]'") from None
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.artifacts = check_store(uri)
        self._client_cls, self.client, self.run_id = MlflowClient, None, None

    def start(self, run_dir: Path, config: dict[str, Any]) -> None:
        refuse_store_inside(self.uri, run_dir)
        try:
            self.client = self._client_cls(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                self.experiment, artifact_location=self.artifacts)
            run = self.client.create_run(exp_id, run_name=self.run_name or Path(run_dir).name)
        except Exception as exc:  # an unusable store URI: one line, before any training
            raise MoMosError(f"MLflow store {self.uri!r} cannot be used: {str(exc).splitlines()[0][:300]}") from None
        self.run_id = run.info.run_id
        for key, value in config.items():
            self.client.log_param(self.run_id, key, json.dumps(value)[:500] if not isinstance(value, str) else value)

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * __import__("time").time())
        metrics = [Metric(_mlflow_key(k), v, stamp, int(record["epoch"])) for k, v in scalars(record).items()]
        for lo in range(0, len(metrics), 900):  # the store takes at most 1,000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[lo:lo + 900])

    def finish(self, run_dir: Path, result: dict[str, Any]) -> None:
        run_dir = Path(run_dir)
        for name in ("result.json", "two_part.json", "config.json"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        try:
            from .compare import load_run, plot

            with tempfile.TemporaryDirectory() as tmp:
                self.client.log_artifact(self.run_id, str(plot([load_run(run_dir)], Path(tmp) / "curves.png")))
        except (MoMosError, ImportError) as exc:
            warnings.warn(f"no plot sent to MLflow: {exc}", stacklevel=2)
        self.client.set_terminated(self.run_id)


#: seconds a tracking server has to accept a connection before the run is refused
PROBE_TIMEOUT = 5.0
#: the tables every MLflow SQL store has
_MLFLOW_TABLES = {"experiments", "runs", "metrics", "params", "alembic_version"}


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` store URI (None for other stores)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_store(uri: str) -> str | None:
    """Refuse an MLflow store that is not MLflow's before anything is written; returns where a new
    experiment's artifacts go (beside a sqlite store, not in the current folder; None: the store decides).

    The ``-o`` rules hold for a store: an existing file is used only when it is already an MLflow database
    (a user's own SQLite file would gain MLflow's tables), and a server must accept a connection within
    :data:`PROBE_TIMEOUT` seconds (MLflow itself retries an unreachable one for minutes)."""
    if not isinstance(uri, str) or not uri:
        raise MoMosError(f"an MLflow store is a URI such as {DEFAULT_MLFLOW_URI}, got {uri!r}")
    db = _sqlite_path(uri)
    if db is not None:
        if os.path.lexists(db):
            _refuse_unless_mlflow_db(db, uri)
        return (db.resolve().parent / "mlartifacts").as_uri()
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        _probe_server(uri)
        return None
    if scheme in ("", "file"):
        path = Path(uri[len("file://"):] if scheme == "file" else uri)
        if path.exists() and not path.is_dir():
            raise MoMosError(f"MLflow store {uri!r} is a file, not an MLflow folder or database; nothing was written")
        if path.is_dir() and any(path.iterdir()) and not ((path / ".trash").is_dir() or any(path.glob("*/meta.yaml"))):
            raise MoMosError(f"MLflow store {uri!r} is a folder that MLflow did not write; choose a new or empty "
                             "folder, or a sqlite:/// URI; nothing was written")
        return None
    raise MoMosError(f"MLflow store {uri!r}: use sqlite:///PATH, a folder, or http(s)://HOST:PORT")


def refuse_store_inside(uri: str, folder: str | Path) -> None:
    """MoMosError when a sqlite store would lie inside ``folder`` (a run or sweep this command writes), whether
    or not the folder exists yet: the run's own files (``log.jsonl``) are never a database."""
    from kcomplexity.fileio import resolved

    db = _sqlite_path(uri)
    if db is None:
        return
    d, f = resolved(db), resolved(folder)
    if d == f or f in d.parents:
        raise MoMosError(f"MLflow store {uri!r} lies inside {folder}, which this command writes; choose a store "
                         "outside it; nothing was written")


def _refuse_unless_mlflow_db(db: Path, uri: str) -> None:
    import sqlite3

    if not db.is_file():
        raise MoMosError(f"MLflow store {uri!r} is not a regular file; nothing was written")
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error:
        tables = set()
    if not _MLFLOW_TABLES <= tables:
        raise MoMosError(f"MLflow store {uri!r}: {db} exists and is not an MLflow database; it is left as it was. "
                         "Choose a new file")


def _probe_server(uri: str) -> None:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=PROBE_TIMEOUT):
            pass
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MoMosError(f"cannot reach an MLflow server at {uri}: {why}; nothing was started") from None


def _mlflow_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . space and /; estimator settings (``lzma:preset=6``) map to _."""
    return re.sub(r"[^\w\-. /]", "_", name)


def make(tensorboard: str | Path | None = None, mlflow: str | None = None, run_name: str | None = None,
         experiment: str = "momos", outputs: Path | str | None = None) -> list[Any]:
    """The trackers a command line asks for (none by default); a store inside ``outputs`` (the run or sweep
    folder the command writes) is refused before anything is written."""
    out: list[Any] = []
    if tensorboard:
        out.append(TensorBoard(tensorboard))
    if mlflow:
        out.append(MLflow(mlflow, experiment=experiment, run_name=run_name))
        if outputs is not None:
            refuse_store_inside(mlflow, outputs)
    return out


__all__ = ["TensorBoard", "MLflow", "make", "scalars", "DEFAULT_MLFLOW_URI"]
