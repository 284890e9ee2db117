"""Reliability: never delete what the user owns, one process per run, tolerant resume, bounded inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import kcomplexity as kc
import momos
from kcomplexity.cli import main as kc_main
from momos.cli import main
from momos.compare import load_run, table
from momos.config import TrainConfig
from momos.errors import RunError
from momos.trainer import read_log, train

FAST = dict(epochs=2, width=16, estimators=["lzma"])


# ------------------------------------------------------------------ 1. never remove what we did not create
def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(RunError, match="not a run directory"):
        train(TrainConfig(**FAST), mine, quiet=True)
    with pytest.raises(RunError, match="not a run directory"):
        train(TrainConfig(**FAST), mine, overwrite=True, quiet=True)
    assert (mine / "chapter1.tex").read_text() == "precious"


def test_overwrite_of_a_run_keeps_files_we_did_not_write(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    (run / "notes.txt").write_text("mine")
    train(TrainConfig(method="momos", **FAST), run, overwrite=True, quiet=True)
    assert (run / "notes.txt").read_text() == "mine"
    assert read_log(run / "log.jsonl")[-1]["projection"] is not None


def test_demo_refuses_to_replace_folders_it_did_not_create(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "baseline").mkdir(parents=True)
    (out / "baseline" / "data.csv").write_text("1,2,3")
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert (out / "baseline" / "data.csv").read_text() == "1,2,3"


# ------------------------------------------------------------------ 2. one process per run
def test_a_second_process_cannot_write_a_running_run(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--epochs", "200", "--width", "16", "-e", "lzma", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "momos", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (run / "log.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        for extra in (["--resume"], ["--overwrite"]):
            res = subprocess.run([sys.executable, "-m", "momos", "train", "--out", str(run), *extra, "--quiet"],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 2 and f"pid {proc.pid}" in res.stderr and "Traceback" not in res.stderr
    finally:
        proc.kill()
        proc.wait()
    # the lock dies with its holder: resume now works
    log_before = read_log(run / "log.jsonl")
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["epochs"] == 200 and log_before


# ------------------------------------------------------------------ 3. a failed start leaves nothing behind
def test_a_failed_start_writes_nothing_and_a_killed_start_restarts(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(momos.MoMosError):
        train(TrainConfig(model="grok-mlp", data="digits", epochs=1), run, quiet=True)
    assert not run.exists()
    with pytest.raises(momos.MoMosError):
        train(TrainConfig(data="mnist", data_dir=str(tmp_path / "nowhere"), epochs=1), run, quiet=True)
    assert not run.exists()
    # a run killed before its first checkpoint: config.json but no checkpoint
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": TrainConfig(**FAST).to_json(), "versions": {}}))
    train(TrainConfig(method="momos", **FAST), run, quiet=True)
    assert [r["epoch"] for r in read_log(run / "log.jsonl")] == [0, 1, 2]


# ------------------------------------------------------------------ 4. resume tolerates a damaged log
def test_resume_moves_bad_lines_aside_and_keeps_good_records(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    good = read_log(run / "log.jsonl")
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.warns(UserWarning, match="moved"):
        records = read_log(run / "log.jsonl", repair=True)
    assert records == good  # every line that parses is kept, in order
    aside = list(run.glob("log.jsonl.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"{not json\n"
    assert read_log(run / "log.jsonl") == good
    # a bad line in the middle of a log that is then resumed: same records, nothing lost
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text(lines[0] + "\x00garbage\n" + "".join(lines[1:]))
    with pytest.warns(UserWarning, match="moved"):
        train({}, run, resume=True, quiet=True)
    assert read_log(run / "log.jsonl") == good


def test_nan_records_are_written_and_resumable(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(lr=float("inf"), **FAST), run, quiet=True)
    log = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2] and not np.isfinite(log[-1]["train_loss"])


def test_resume_refuses_a_deleted_log_with_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    (run / "log.jsonl").unlink()
    with pytest.raises(RunError, match="log.jsonl"):
        train({}, run, resume=True, quiet=True)


# ------------------------------------------------------------------ 5. compare: unique labels
def test_compare_keeps_runs_with_the_same_basename(tmp_path):
    for parent in ("a", "b"):
        train(TrainConfig(**FAST), tmp_path / parent / "run", quiet=True)
    runs = [load_run(tmp_path / p / "run") for p in ("a", "b")]
    assert len(table(runs)) == 2


# ------------------------------------------------------------------ 6. score never overwrites its input
def test_score_refuses_to_write_over_its_input(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(10)}, str(path))
    before = path.read_bytes()
    assert kc_main(["score", str(path), "-o", str(path)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert path.read_bytes() == before


# ------------------------------------------------------------------ 7. checkpoint pointer stays inside the run
def test_latest_pointing_outside_the_run_is_refused(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"epoch": 2, "folder": "../../elsewhere"}))
    with pytest.raises(RunError, match="outside"):
        train({}, run, resume=True, quiet=True)


# ------------------------------------------------------------------ 8. block size bounded
def test_block_size_is_bounded_by_the_largest_tensor():
    model = torch.nn.Linear(8, 10)
    with pytest.raises(momos.MoMosError, match="largest"):
        momos.project(model, s=10**9, capacity=0.5)
    with pytest.raises(kc.errors.KComplexityError, match="largest"):
        kc.score(model, "mdl:s=1000000000")


# ------------------------------------------------------------------ 10. only regular files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_not_read(tmp_path):
    fifo = tmp_path / "w.npy"
    os.mkfifo(fifo)
    with pytest.raises(kc.errors.UnsupportedSourceError, match="regular file"):
        kc.score(str(fifo))


# ------------------------------------------------------------------ 11. settings declared once, no silent coercion
@pytest.mark.parametrize("spec,needle", [
    ("zstd:level=abc", "integer"), ("zstd:level=", "integer"), ("lzma:preset=nan", "integer"),
    ("mdl:s=abc", "integer"), ("bdm:block=inf", "integer"), ("zstd:level=1.5", "integer"),
    ("lzma:extreme=maybe", "true or false"), ("bdm-k:k=4.5", "integer"), ("mdl:s=2:s=3", "twice"),
    ("zstd:lvl=3", "allowed: level"), ("zstd:level=23", "1..22"), ("quant:rel=-1", "> 0"),
    ("intrinsic:max_evals=2", ">= 3"), ("bdm:partition=xx", "ignore, recursive"),
])
def test_estimator_settings_are_checked_against_their_declaration(spec, needle):
    with pytest.raises(kc.errors.EstimatorSettingError, match=needle):
        kc.estimators.get(spec)


def test_estimator_settings_as_keywords_and_bad_estimator_lists():
    with pytest.raises(kc.errors.EstimatorSettingError, match="integer"):
        kc.estimators.get("zstd", level="abc")
    with pytest.raises(kc.errors.EstimatorSettingError, match="integer"):
        kc.estimators.get("zstd", level=1.5)
    with pytest.raises(kc.errors.EstimatorSettingError, match="both"):
        kc.estimators.get("zstd:level=3", level=3)
    for bad in (None, 5, [1], {}, []):
        with pytest.raises(kc.errors.UnknownEstimatorError):
            kc.score({"w": np.ones(3, np.float32)}, estimators=bad)
    assert kc.estimators.get("lzma:extreme=true:lc=0").settings()["extreme"] is True
