"""User files are never lost (issue #21, items 1-6, 11, 12, 17), tested against real user-shaped folders."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from kcomplexity.cli import main as kc_main
from kcomplexity.fileio import FileTypeError, OutputIsInputError, read_bytes, refuse_output_into, write_atomic
from momos.cli import main
from momos.config import TrainConfig
from momos.errors import RunError
from momos.trainer import read_log, train

FAST = dict(epochs=2, width=16, estimators=["lzma"])


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (links shown by their target), to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _keras_folder(root: Path) -> Path:
    """A Keras-style training folder: its own config.json (with a "config" key), logs and checkpoints."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
    (root / "log.jsonl").write_text('{"epoch": 0, "loss": 1.0}\n')
    (root / "result.json").write_text('{"acc": 0.9}')
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "ckpt-1.index").write_bytes(b"\x00keras")
    (root / "checkpoints" / "ckpt-1.data-00000-of-00001").write_bytes(b"weights")
    return root


# ------------------------------------------------------------------ 1. who may replace a run
def test_a_folder_that_merely_looks_like_a_run_is_never_touched(tmp_path):
    keras = _keras_folder(tmp_path / "keras")
    before = _tree(keras)
    for kwargs in ({}, {"overwrite": True}):
        with pytest.raises(RunError, match="not a run directory"):
            train(TrainConfig(**FAST), keras, quiet=True, **kwargs)
    with pytest.raises(RunError, match="nothing to resume"):
        train({}, keras, resume=True, quiet=True)
    assert _tree(keras) == before


def test_a_finished_run_without_checkpoints_is_neither_replaced_nor_restarted(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    shutil.rmtree(run / "checkpoints")
    before = _tree(run)
    with pytest.raises(RunError, match="already holds a different run"):
        train(TrainConfig(method="momos", **FAST), run, quiet=True)
    with pytest.raises(RunError, match="cannot be resumed: it has no checkpoint"):
        train({}, run, resume=True, quiet=True)
    assert _tree(run) == before


def test_resume_with_a_fifo_pointer_fails_and_says_why(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    latest = run / "checkpoints" / "latest.json"
    latest.unlink()
    os.mkfifo(latest)
    before = read_log(run / "log.jsonl")
    with pytest.raises(RunError, match="FIFO"):
        train({}, run, resume=True, quiet=True)
    with pytest.raises(RunError, match="already holds"):
        train(TrainConfig(**FAST), run, quiet=True)
    assert read_log(run / "log.jsonl") == before


def test_a_run_written_without_the_marker_is_read_but_never_changed(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    data = json.loads((run / "config.json").read_text())
    del data["format"], data["format_version"]
    (run / "config.json").write_text(json.dumps(data))
    before = _tree(run)
    assert main(["compare", str(run), "-f", "json"]) == 0
    with pytest.raises(RunError, match="no run-format marker"):
        train(TrainConfig(**FAST), run, overwrite=True, quiet=True)
    assert _tree(run) == before


# ------------------------------------------------------------------ 2. outputs that are inputs
@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_file({"a": rng.standard_normal((8, 8), dtype=np.float32)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b": rng.standard_normal((8,), dtype=np.float32)}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    return folder


def test_outputs_that_resolve_into_inputs_are_refused(model_folder, tmp_path, capsys):
    before = _tree(model_folder)
    index = model_folder / "model.safetensors.index.json"
    link = tmp_path / "alias"
    link.symlink_to(model_folder / "model-00001-of-00002.safetensors")
    cases = [["score", str(model_folder), "-o", str(model_folder / "report.txt")],
             ["score", str(index), "-o", str(model_folder / "model-00002-of-00002.safetensors")],
             ["score", str(model_folder), "-o", str(link)],
             ["rd", str(model_folder), "-o", str(model_folder / "model-00001-of-00002.safetensors")],
             ["rd", str(model_folder), "--plot", str(model_folder / "rd.png")]]
    for argv in cases:
        assert kc_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "input" in err and "Traceback" not in err
    assert _tree(model_folder) == before
    assert kc_main(["score", str(index), "-o", str(tmp_path / "report.txt"), "-q"]) == 0  # outside: fine


def test_prequential_refuses_to_write_into_its_data_folder(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    (data / "train-labels-idx1-ubyte").write_bytes(b"labels")
    rc = main(["prequential", "--data", "mnist", "--data-dir", str(data), "-o", str(data / "train-labels-idx1-ubyte")])
    assert rc == 2 and "input" in capsys.readouterr().err
    assert (data / "train-labels-idx1-ubyte").read_bytes() == b"labels"


def test_write_atomic_replaces_a_link_instead_of_writing_through_it(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    link = tmp_path / "out.txt"
    link.symlink_to(precious)
    write_atomic(link, "report")
    assert precious.read_text() == "keep" and link.read_text() == "report" and not link.is_symlink()
    with pytest.raises(OutputIsInputError):
        refuse_output_into(tmp_path / "sub" / "x", [tmp_path])


# ------------------------------------------------------------------ 3. files we did not write, inside a run
def test_demo_keeps_a_users_compare_png(tmp_path, capsys):
    out = tmp_path / "X"
    out.mkdir()
    (out / "compare.png").write_bytes(b"my figure")
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 2
    assert "not a demo folder" in capsys.readouterr().err
    assert (out / "compare.png").read_bytes() == b"my figure"


def test_resume_and_overwrite_keep_user_files_inside_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**FAST, "epochs": 3}), run, quiet=True)
    backup = run / "checkpoints" / "epoch-00015-my-backup"
    backup.mkdir()
    (backup / "model.safetensors").write_bytes(b"my weights")
    (run / "checkpoints" / "notes.txt").write_text("mine")
    (run / "checkpoints" / "epoch-00003" / "extra.txt").write_text("also mine")
    train({}, run, resume=True, quiet=True)
    assert (backup / "model.safetensors").read_bytes() == b"my weights"
    train(TrainConfig(method="momos", **FAST), run, overwrite=True, quiet=True)
    assert (backup / "model.safetensors").read_bytes() == b"my weights"
    assert (run / "checkpoints" / "notes.txt").read_text() == "mine"
    assert (run / "checkpoints" / "epoch-00003" / "extra.txt").read_text() == "also mine"
    assert read_log(run / "log.jsonl")[-1]["projection"] is not None


def test_a_symlinked_lock_or_config_is_never_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".momos.lock").symlink_to(precious)
    with pytest.raises(RunError, match="symbolic link"):
        train(TrainConfig(**FAST), run, quiet=True)
    assert precious.read_text() == "keep"
    (run / ".momos.lock").unlink()
    train(TrainConfig(**FAST), run, quiet=True)
    (run / "result.json").unlink()
    (run / "result.json").symlink_to(precious)
    with pytest.raises(RunError):
        train(TrainConfig(**FAST), run, overwrite=True, quiet=True)
    assert precious.read_text() == "keep"


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_lock_that_is_not_a_file_is_one_error(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".momos.lock").mkdir() if kind == "dir" else os.mkfifo(run / ".momos.lock")
    with pytest.raises(RunError, match="run lock"):
        train(TrainConfig(**FAST), run, quiet=True)


# ------------------------------------------------------------------ 4. a failed start leaves a rerunnable folder
@pytest.mark.parametrize("bad", [{"method": "momos", "s": 10 ** 9}, {"estimators": ["mdl:s=1000000"]}])
def test_settings_that_do_not_fit_the_model_fail_before_any_write(tmp_path, bad):
    run = tmp_path / "run"
    with pytest.raises(Exception, match="exceeds the largest tensor"):
        train(TrainConfig(**{**FAST, **bad}), run, quiet=True)
    assert not run.exists()
    train(TrainConfig(**FAST), run, quiet=True)  # a plain rerun with good settings is accepted
    assert (run / "result.json").is_file()


def test_a_start_that_failed_after_epoch_0_is_accepted_by_a_plain_rerun(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**FAST, "epochs": 0}), run, quiet=True)
    (run / "result.json").unlink()  # as if it died after its epoch-0 checkpoint
    train(TrainConfig(method="momos", **FAST), run, quiet=True)
    assert [r["epoch"] for r in read_log(run / "log.jsonl")] == [0, 1, 2]


# ------------------------------------------------------------------ 5. a bad line mid-log does not block resume
def test_resume_with_a_damaged_line_in_the_middle_of_the_log(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**{**FAST, "epochs": 3}), run, quiet=True)
    (run / "result.json").unlink()
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text(lines[0] + "{damaged\n" + "".join(lines[2:]))
    with pytest.warns(UserWarning, match="gap|moved"):
        train({}, run, resume=True, quiet=True)
    assert [r["epoch"] for r in read_log(run / "log.jsonl")] == [0, 2, 3]
    assert b"{damaged" in next(run.glob("log.jsonl.bad-*")).read_bytes()


# ------------------------------------------------------------------ 6. only regular files are read
def test_fifos_are_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    t = time.perf_counter()
    with pytest.raises(FileTypeError, match="FIFO"):
        read_bytes(fifo)
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "config.json")
    res = subprocess.run([sys.executable, "-m", "momos", "compare", str(run)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "FIFO" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------ 11/12. run files that escape or are malformed
def test_malformed_run_files_are_one_error(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    latest = run / "checkpoints" / "latest.json"
    good = latest.read_text()
    for bad in ('{"folder": "epoch-00002"}', '{"epoch": 2, "folder": "../../elsewhere"}', "[" * 100000):
        latest.write_text(bad)
        with pytest.raises(RunError):
            train({}, run, resume=True, quiet=True)
    latest.write_text(good)
    import torch

    state = run / "checkpoints" / "epoch-00002" / "state.pt"
    for bad in ([1, 2], torch.zeros(3)):
        torch.save(bad, state)
        with pytest.raises(RunError, match="corrupt checkpoint"):
            train({}, run, resume=True, quiet=True)
    (run / "config.json").write_text("[" * 100000 + "]" * 100000)
    assert main(["compare", str(run)]) == 2


def test_hf_cache_ref_that_escapes_the_cache_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from kcomplexity.errors import CorruptFileError
    from kcomplexity.sources import open_source

    cache = tmp_path / "hub"
    repo = cache / "models--org--x"
    outside = tmp_path / "outside" / "snap"
    outside.mkdir(parents=True)
    save_file({"w": np.ones(4, dtype=np.float32)}, str(outside / "model.safetensors"))
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    (repo / "refs" / "main").write_text("../../../outside/snap")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(CorruptFileError, match="outside"):
        open_source("org/x")
    (repo / "refs" / "main").unlink()
    os.mkfifo(repo / "refs" / "main")
    with pytest.raises(CorruptFileError, match="FIFO"):
        open_source("org/x")


# ------------------------------------------------------------------ 17. the lock is taken before loading
def test_the_lock_is_taken_before_the_data_is_loaded(tmp_path):
    from momos import rundir

    run = tmp_path / "run"
    with rundir.locked(run):  # another holder; the data below does not exist, so loading first would fail first
        with pytest.raises(RunError, match="in use by another training process"):
            train(TrainConfig(data="mnist", data_dir=str(tmp_path / "nowhere"), **FAST), run, quiet=True)


def test_a_hugging_face_cache_is_never_an_output(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    repo = cache / "models--org--x"
    (repo / "refs").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / "abc").mkdir(parents=True)
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(repo / "blobs" / "0123abcd"))
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to("../../blobs/0123abcd")
    (repo / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    before = _tree(cache)
    for out in (repo / "snapshots" / "abc" / "model.safetensors", repo / "blobs" / "0123abcd",
                repo / "snapshots" / "abc" / "report.txt"):
        assert kc_main(["score", "org/x", "-o", str(out), "-q"]) == 2
        assert "input" in capsys.readouterr().err
    assert _tree(cache) == before
    assert kc_main(["score", "org/x", "-o", str(tmp_path / "report.txt"), "-q"]) == 0
