"""Sweeps: grid/zip expansion, resume, kill -9, --jobs and Ray identical to one process, aggregation, trackers."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# a local Ray cluster binds to 127.0.0.1 only when Ray treats the machine as a single node (read at its import)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from momos import aggregate  # noqa: E402
from momos.cli import main  # noqa: E402
from momos.sweep import FAILURES, Spec, SweepFailedError, sweep  # noqa: E402
from momos.sweep_spec import SweepSpecError  # noqa: E402

BASE = {"model": "mlp", "data": "digits", "epochs": 2, "width": 16, "estimators": "lzma"}


def _spec(grid=None, zip_=None, base=None) -> Spec:
    return Spec.from_mapping({"base": {**BASE, **(base or {})}, "grid": grid or {}, "zip": zip_ or {}})


def _numbers(run: Path) -> tuple[dict, list[dict]]:
    """A run's result and log without wall times and paths: what must be identical across backends."""
    result = json.loads((run / "result.json").read_text())
    result.pop("run_dir")
    log = [{k: v for k, v in json.loads(line).items() if k not in ("time",)}
           for line in (run / "log.jsonl").read_text().splitlines()]
    result["final"].pop("time", None)
    return result, log


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ the spec
def test_grid_and_zip_expand_into_named_points():
    spec = _spec(grid={"seed": [0, 1]}, zip_={"method": ["baseline", "momos", "momos"], "s": [2, 2, 4]})
    names = [p.name for p in spec.points()]
    assert names == ["method=baseline,s=2,seed=0", "method=baseline,s=2,seed=1", "method=momos,s=2,seed=0",
                     "method=momos,s=2,seed=1", "method=momos,s=4,seed=0", "method=momos,s=4,seed=1"]
    p = spec.points()[-1]
    assert p.config["s"] == 4 and p.config["seed"] == 1 and p.config["method"] == "momos"
    assert p.config["epochs"] == 2 and p.config["estimators"] == ["lzma"] and p.config["threads"] == 1
    # only axes that vary appear in names; a single-valued axis still sets the value
    one = _spec(grid={"method": ["momos"], "seed": [0, 3]}).points()
    assert [q.name for q in one] == ["seed=0", "seed=3"] and one[0].config["method"] == "momos"
    # the command line gives the same spec as the file
    cli = Spec.from_options(["method=baseline,momos", "seed=0,1"], ["epochs=2", "width=16", "estimators=lzma"])
    file_spec = _spec(grid={"method": ["baseline", "momos"], "seed": [0, 1]})
    assert [(q.name, q.config) for q in cli.points()] == [(q.name, q.config) for q in file_spec.points()]
    # the resolved spec written to sweep.toml reads back to the same points
    again = Spec.from_mapping(__import__("tomllib").loads(file_spec.to_toml()))
    assert [(q.name, q.config) for q in again.points()] == [(q.name, q.config) for q in file_spec.points()]


@pytest.mark.parametrize("data, message", [
    ({"grid": {"bogus": [1]}}, "unknown key.*bogus.*allowed: model, data"),
    ({"gird": {}}, "unknown section.*gird.*allowed: base, grid, zip, resources"),
    ({"grid": {"seed": []}}, "empty axis"),
    ({"grid": {"seed": 3}}, "must be a list"),
    ({"zip": {"s": [2, 4], "capacity": [0.1]}}, "one length"),
    ({"grid": {"seed": [0, 0]}}, "duplicate points"),
    ({"base": {"seed": 1}, "grid": {"seed": [0, 1]}}, "in \\[base\\] and also an axis"),
    ({"grid": {"lr": [1e-3, -1.0]}}, r"point lr=-1.0: lr must be in \(0, 1e\+06\]"),
    ({"grid": {"method": ["baseline", "bogus"]}}, "point method=bogus: unknown method"),
    ({"resources": {"cpus": 0}}, "cpus must be a whole number >= 1"),
])
def test_bad_specs_are_one_clear_error(data, message):
    with pytest.raises(SweepSpecError, match=message):
        Spec.from_mapping({"base": dict(BASE), **{k: v for k, v in data.items() if k != "base"},
                           **({"base": {**BASE, **data["base"]}} if "base" in data else {})}).points()


def test_cli_bad_input_exits_2_and_changes_nothing(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    spec = tmp_path / "spec.toml"
    spec.write_text('[base]\nepochs = 1\n[grid]\nseed = [0, 1]\nbogus = [1]\n')
    for argv in (["sweep", str(spec), "--out", str(tmp_path / "a")],
                 ["sweep", "--grid", "seed=0,1", "--out", str(mine)],
                 ["sweep", "--grid", "seed=", "--out", str(tmp_path / "b")],
                 ["sweep", "--set", "epochs=1", "--grid", "epochs=1,2", "--out", str(tmp_path / "c")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert _tree(mine) == {"notes.txt": b"precious"}
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ running
def test_resume_skips_finished_points_and_jobs_2_is_identical_to_jobs_1(tmp_path):
    spec = _spec(grid={"method": ["baseline", "momos"], "seed": [0, 1]})
    one = sweep(spec, tmp_path / "one", jobs=1, quiet=True)
    assert one.count("trained") == 4
    stamps = {p: (tmp_path / "one" / p / "result.json").stat().st_mtime_ns for p in os.listdir(tmp_path / "one")
              if (tmp_path / "one" / p).is_dir()}
    again = sweep(spec, tmp_path / "one", jobs=1, quiet=True)
    assert again.count("skipped") == 4  # a finished point is not retrained
    assert {p: (tmp_path / "one" / p / "result.json").stat().st_mtime_ns for p in stamps} == stamps
    two = sweep(spec, tmp_path / "two", jobs=2, quiet=True)
    assert two.count("trained") == 4
    for p in spec.points():
        assert _numbers(tmp_path / "one" / p.name) == _numbers(tmp_path / "two" / p.name), p.name
    # the spec may grow by points; any other change is refused and nothing is written
    grown = _spec(grid={"method": ["baseline", "momos"], "seed": [0, 1, 2]})
    res = sweep(grown, tmp_path / "one", jobs=1, quiet=True)
    assert res.count("skipped") == 4 and res.count("trained") == 2
    before = _tree(tmp_path / "one")
    with pytest.raises(SweepSpecError, match="would change"):
        sweep(_spec(grid={"method": ["baseline", "momos"], "seed": [0, 1, 2]}, base={"epochs": 3}),
              tmp_path / "one", quiet=True)
    with pytest.raises(SweepSpecError, match="would be dropped"):
        sweep(_spec(grid={"method": ["baseline"], "seed": [0, 1, 2]}), tmp_path / "one", quiet=True)
    assert _tree(tmp_path / "one") == before


def test_a_later_sweep_reuses_the_workers_with_torch_already_imported_and_gives_the_same_numbers(tmp_path):
    from momos import sweep as sweep_module

    spec = _spec(grid={"method": ["baseline", "momos"]})
    first = sweep(spec, tmp_path / "a", jobs=2, quiet=True)
    pool = sweep_module._WARM[1]
    pids = set(pool._processes)
    second = sweep(spec, tmp_path / "b", jobs=2, quiet=True)
    assert sweep_module._WARM[1] is pool and set(pool._processes) == pids  # the same processes, not new ones
    assert first.count("trained") == second.count("trained") == 2
    for p in spec.points():
        assert _numbers(tmp_path / "a" / p.name) == _numbers(tmp_path / "b" / p.name), p.name
    assert pool.submit(eval, "'momos.trainer' in __import__('sys').modules").result()  # preloaded by its initializer
    sweep_module.close_workers()
    assert not sweep_module._WARM


def test_a_failing_point_is_recorded_and_the_others_finish(tmp_path, capsys):
    # s larger than any tensor of a width-16 MLP passes the config check but fails when the run builds its model
    spec = _spec(zip_={"method": ["baseline", "momos"], "s": [2, 10 ** 6]})
    with pytest.raises(SweepFailedError, match="1 of 2 points failed"):
        sweep(spec, tmp_path / "sw", quiet=True)
    failures = [json.loads(line) for line in (tmp_path / "sw" / FAILURES).read_text().splitlines()]
    assert [f["point"] for f in failures] == ["method=momos,s=1000000"]
    assert "exceeds the largest tensor" in failures[0]["error"]
    assert (tmp_path / "sw" / "method=baseline,s=2" / "result.json").is_file()
    rc = main(["sweep", "--zip", "method=baseline,momos", "--zip", "s=2,1000000", "--set", "epochs=2",
               "--set", "width=16", "--set", "estimators=lzma", "--set", "model=mlp", "--set", "data=digits",
               "--out", str(tmp_path / "sw"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "1 of 2 points failed" in err and "\n" not in err


def test_kill_9_mid_sweep_then_rerun_trains_every_point_once_with_identical_numbers(tmp_path):
    args = ["--grid", "seed=0,1,2", "--set", "epochs=6", "--set", "width=16", "--set", "estimators=lzma"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "momos", "sweep", *args, "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "seed=1" / "checkpoints" / "latest.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (target.is_file() and json.loads(target.read_text())["epoch"] >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "seed=2" / "result.json").exists()
    assert main(["sweep", *args, "--out", str(out), "--quiet"]) == 0
    ref = tmp_path / "ref"
    assert main(["sweep", *args, "--out", str(ref), "--quiet"]) == 0
    for point in ("seed=0", "seed=1", "seed=2"):
        result, log = _numbers(out / point)
        assert [r["epoch"] for r in log] == list(range(7))  # every epoch exactly once
        assert (result, log) == _numbers(ref / point), point


def test_ray_backend_on_a_local_cluster_is_identical_to_local(tmp_path):
    ray = pytest.importorskip("ray")
    spec = _spec(grid={"method": ["baseline", "momos"]})
    sweep(spec, tmp_path / "local", quiet=True)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        res = sweep(spec, tmp_path / "ray", backend="ray", quiet=True)
    finally:
        ray.shutdown()
    assert res.count("trained") == 2
    for p in spec.points():
        assert _numbers(tmp_path / "local" / p.name) == _numbers(tmp_path / "ray" / p.name)


def test_ray_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("ray")
    rc = main(["sweep", "--grid", "seed=0,1", "--set", "epochs=1", "--backend", "ray", "--address",
               "127.0.0.1:1", "--out", str(tmp_path / "sw"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach a Ray cluster" in err and err.count("\n") == 1
    assert not (tmp_path / "sw").exists()  # nothing started, nothing written


# ------------------------------------------------------------------ aggregation
def _synthetic_sweep(root: Path, accs: dict[str, list[float]], bits: dict[str, list[float]]) -> Path:
    """A sweep folder written by hand: method x seed points with chosen accuracies and bits."""
    methods = list(accs)
    seeds = list(range(len(accs[methods[0]])))
    spec = Spec.from_mapping({"base": {"epochs": 1}, "grid": {"method": methods, "seed": seeds}})
    root.mkdir()
    (root / "sweep.toml").write_text(spec.to_toml())
    for name, axes in spec.named():
        run = root / name
        run.mkdir()
        i = axes["seed"]
        final = {"epoch": 1, "complexity": {"lzma": bits[axes["method"]][i]},
                 "details": {"lzma": {"mse": 1e-6 * (i + 1)}}}
        (run / "config.json").write_text(json.dumps({"format": "momos-run", "format_version": 1,
                                                     "config": {"method": axes["method"], "seed": i}}))
        (run / "log.jsonl").write_text(json.dumps({"epoch": 0, "complexity": {"lzma": 1e6}}) + "\n"
                                       + json.dumps(final) + "\n")
        (run / "result.json").write_text(json.dumps({"test_acc": accs[axes["method"]][i], "final": final}))
    return root


def test_aggregation_and_confidence_interval_match_a_hand_computation(tmp_path, capsys):
    out = _synthetic_sweep(tmp_path / "sw", {"baseline": [0.90, 0.92, 0.91], "momos": [0.91, 0.90, 0.93]},
                           {"baseline": [1000.0, 1100.0, 1200.0], "momos": [500.0, 600.0, 400.0]})
    assert main(["compare", str(out), "--reference", "method=baseline", "-f", "json"]) == 0
    groups = {g["group"]["method"]: g for g in json.loads(capsys.readouterr().out)}
    mo = groups["momos"]
    assert mo["n"] == 3 and mo["mean"]["test_acc"] == pytest.approx((0.91 + 0.90 + 0.93) / 3)
    assert mo["std"]["lzma"] == pytest.approx(100.0)  # sample std of 500, 600, 400
    assert mo["mean"]["lzma:mse"] == pytest.approx(2e-6)  # a lossy figure's distortion travels with its bits
    # paired differences 0.01, -0.02, 0.02: mean 1/300, sample sd sqrt(7/3)/100, t(0.975, 2) = 4.302652729911275
    d = [0.01, -0.02, 0.02]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)
    diff = mo["diff"]["test_acc"]
    assert diff["mean"] == pytest.approx(mean) and diff["n"] == 3
    assert diff["lo"] == pytest.approx(mean - half) and diff["hi"] == pytest.approx(mean + half)
    assert mo["diff"]["lzma"]["mean"] == pytest.approx(-600.0)
    assert groups["baseline"]["diff"] == {}
    assert main(["compare", str(out), "--reference", "method=baseline"]) == 0
    text = capsys.readouterr().out
    assert "0.9133 ± 0.0153" in text and "(reference)" in text and "-600 [" in text
    assert main(["compare", str(out), "-f", "csv"]) == 0
    assert "test_acc:mean" in capsys.readouterr().out.splitlines()[0]
    assert main(["compare", str(out), "--reference", "method=nothing"]) == 2


def test_pareto_set_of_a_synthetic_table():
    bits = np.array([100, 200, 150, 300, 50, 200, np.nan])
    acc = np.array([0.80, 0.90, 0.85, 0.90, 0.70, 0.88, 0.99])
    assert aggregate.pareto(bits, acc).tolist() == [True, True, True, False, True, False, False]


def test_frontier_and_curves_figures(tmp_path, capsys):
    out = _synthetic_sweep(tmp_path / "sw", {"baseline": [0.90, 0.92], "momos": [0.91, 0.90]},
                           {"baseline": [1000.0, 1100.0], "momos": [500.0, 600.0]})
    for name in ("front.png", "front.svg"):
        assert main(["compare", str(out), "--frontier", "lzma", "--plot", str(tmp_path / name), "--curves"]) == 0
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "front-curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "front.svg").read_text().lstrip().startswith("<?xml")
    assert main(["compare", str(out), "--frontier", "bogus", "--plot", str(tmp_path / "x.png")]) == 2
    assert "logged: lzma" in capsys.readouterr().err
    assert main(["compare", str(out), "--plot", str(out / "seed=0" / "x.png"), "--frontier", "lzma"]) == 2


# ------------------------------------------------------------------ trackers
def test_tensorboard_and_mlflow_receive_every_epoch(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    tb = tmp_path / "tb"
    assert main(["sweep", "--grid", "seed=0,1", "--set", "epochs=2", "--set", "width=16", "--set",
                 "estimators=lzma", "--out", str(tmp_path / "sw"), "--tensorboard", str(tb), "--mlflow",
                 "--quiet"]) == 0
    acc = EventAccumulator(str(tb / "seed=1")).Reload()
    assert [e.step for e in acc.Scalars("val_acc")] == [0, 1, 2]
    logged = json.loads((tmp_path / "sw" / "seed=1" / "log.jsonl").read_text().splitlines()[2])
    assert acc.Scalars("complexity/lzma")[-1].value == pytest.approx(logged["complexity"]["lzma"])
    client = MlflowClient(tracking_uri="sqlite:///mlruns.db")
    exp = client.get_experiment_by_name("sw")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"seed=0", "seed=1"}
    run = runs["seed=1"]
    assert run.data.params["seed"] == "1"
    history = client.get_metric_history(run.info.run_id, "complexity/lzma")
    assert sorted(m.step for m in history) == [0, 1, 2] and history[-1].value == logged["complexity"]["lzma"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"result.json", "curves.png"} <= artifacts


def test_a_runs_thread_count_is_its_own_and_put_back(tmp_path):
    import torch

    from momos.config import TrainConfig
    from momos.trainer import train

    before = torch.get_num_threads()
    train(TrainConfig(epochs=1, width=16, estimators=[], threads=1), tmp_path / "r", quiet=True)
    assert torch.get_num_threads() == before  # what the caller trains next is not changed by this run


# ------------------------------------------------------------------ checked before anything starts (#28)
def test_a_frontier_or_curves_of_a_final_figure_is_refused_before_any_figure(tmp_path, capsys):
    out = _synthetic_sweep(tmp_path / "sw", {"baseline": [0.90, 0.92], "momos": [0.91, 0.90]},
                           {"baseline": [1000.0, 1100.0], "momos": [500.0, 600.0]})
    for run in out.iterdir():
        if run.is_dir():
            (run / "two_part.json").write_text(json.dumps({"total_bits": 5000, "no_model_bits": 4176}))
    for frontier, why in (("two_part", "per epoch"), ("lzma:mse", "distortion"), ("test_acc", "y axis")):
        plot = tmp_path / f"{frontier.replace(':', '_')}.png"
        assert main(["compare", str(out), "--frontier", frontier, "--plot", str(plot), "--curves"]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err and not plot.exists()
    assert main(["compare", str(out), "--frontier", "two_part", "--plot", str(tmp_path / "tp.png")]) == 0
    assert (tmp_path / "tp.png").is_file()


def test_a_damaged_result_leaves_its_point_out_and_names_it(tmp_path, capsys):
    out = _synthetic_sweep(tmp_path / "sw", {"baseline": [0.90, 0.92], "momos": [0.91, 0.90]},
                           {"baseline": [1000.0, 1100.0], "momos": [500.0, 600.0]})
    bad = out / "method=momos,seed=1" / "result.json"
    bad.write_text(bad.read_text()[:20])
    with pytest.warns(UserWarning, match="method=momos,seed=1"):
        assert main(["compare", str(out), "-f", "json"]) == 0
    groups = {g["group"]["method"]: g for g in json.loads(capsys.readouterr().out)}
    assert groups["momos"]["n"] == 1 and groups["baseline"]["n"] == 2


@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_a_failures_file_that_is_not_ours_stops_the_sweep_before_it_starts(tmp_path, kind):
    out = tmp_path / "sw"
    spec = _spec(zip_={"method": ["baseline", "momos"], "s": [2, 10 ** 6]})
    sweep(Spec.from_mapping({"base": {**BASE, "epochs": 1}, "grid": {"seed": [0]}}), out, quiet=True)
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    if kind == "symlink":
        (out / FAILURES).symlink_to(target)
    else:
        (out / FAILURES).mkdir()
    spec = Spec.from_mapping({"base": {**BASE, "epochs": 1}, "grid": {"seed": [0, 1]}})
    with pytest.raises(SweepSpecError, match="not a regular file"):
        sweep(spec, out, quiet=True)
    assert not (out / "seed=1").exists() and target.read_text() == "keep\n"


def test_a_grid_of_a_million_points_is_refused_at_once():
    grid = {"seed": list(range(100)), "q": list(range(1, 101)), "k": list(range(1, 101))}
    with pytest.raises(SweepSpecError, match="1,000,000 points"):
        Spec.from_mapping({"base": BASE, "grid": grid})


def test_point_labels_stay_inside_the_frontier_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 10)
    notes = [ax.annotate("method=momos+qat,capacity=0.05,scope=tensor", (9.5, 0.5), textcoords="offset points",
                         xytext=(6, -12), ha="left"),
             ax.annotate("method=baseline,capacity=0.05,scope=global", (0.3, 0.5), textcoords="offset points",
                         xytext=(-6, -12), ha="right")]
    aggregate._keep_inside(fig, ax, notes)
    fig.canvas.draw()
    box = fig.bbox
    for note in notes:
        extent = note.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1
    plt.close(fig)


def test_mlflow_stores_that_are_not_ours_are_refused_and_artifacts_stay_beside_the_store(tmp_path, monkeypatch,
                                                                                           capsys):
    pytest.importorskip("mlflow")
    import sqlite3

    from momos import trackers

    monkeypatch.chdir(tmp_path)
    user = tmp_path / "user.db"
    con = sqlite3.connect(user)
    con.execute("CREATE TABLE mine (x)")
    con.commit()
    con.close()
    before = user.read_bytes()
    args = ["train", "--epochs", "1", "--width", "8", "--estimators", "lzma", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "r1"), "--mlflow", f"sqlite:///{user}"]) == 2
    assert "not an MLflow database" in capsys.readouterr().err and user.read_bytes() == before
    assert main([*args, "--out", str(tmp_path / "r2"), "--mlflow", f"sqlite:///{tmp_path / 'r2' / 'log.jsonl'}"]) == 2
    assert "lies inside" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    assert main([*args, "--out", str(tmp_path / "r3"), "--mlflow", "http://127.0.0.1:9"]) == 2
    assert "cannot reach an MLflow server" in capsys.readouterr().err and not (tmp_path / "r3").exists()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="MLflow did not write"):
        trackers.check_store(str(tmp_path / "folder"))
    # a real store: its artifacts go beside it, not into the current folder
    store = tmp_path / "st" / "ml.db"
    store.parent.mkdir()
    tracker = trackers.MLflow(f"sqlite:///{store}", experiment="e")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    tracker.start(run, {"seed": 0})
    tracker.log({"epoch": 0, "val_acc": 0.5})
    tracker.client.log_artifact(tracker.run_id, str(run / "config.json"))
    tracker.client.set_terminated(tracker.run_id)
    assert (tmp_path / "st" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()
    assert trackers.check_store(f"sqlite:///{store}")  # now an MLflow database: accepted
