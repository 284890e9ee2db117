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
    assert "not a demo folder" in capsys.readouterr().err
    assert (out / "baseline" / "data.csv").read_text() == "1,2,3"


def test_the_demo_headline_says_no_more_than_its_numbers(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    tab = {run: json.loads((tmp_path / "demo" / run / "two_part.json").read_text()) for run in ("baseline", "momos")}
    plain = tab["baseline"]["no_model_bits"]
    assert plain == tab["momos"]["no_model_bits"] and f"{plain:,.0f}" in out
    if all(t["total_bits"] >= plain for t in tab.values()):  # no model pays for itself: no winner is named
        assert "no two-part total beats the labels sent with no model" in out and "shortest two-part total" not in out
    assert "one seed" in out and "momos sweep --grid method=baseline,momos --grid seed=" in out


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
    (run / "config.json").write_text(json.dumps({"format": "momos-run", "format_version": 1,
                                                 "config": TrainConfig(**FAST).to_json(), "versions": {}}))
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


def test_a_learning_rate_the_optimiser_cannot_hold_is_one_line(tmp_path, capsys):
    from momos.cli import main

    for lr in ("1e38", "inf", "nan", "0"):
        assert main(["train", "--epochs", "1", "--width", "8", "--lr", lr, "--out", str(tmp_path / lr), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "lr must be in (0, 1e+06]" in err and "Traceback" not in err and not (tmp_path / lr).exists()


def test_nan_records_are_written_and_resumable(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(lr=1e6, **FAST), run, quiet=True)  # the largest lr a run takes diverges at once
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


# ------------------------------------------------------------------ 12. bad numbers and devices, before any write
@pytest.mark.parametrize("argv,needle", [
    (["--lr", "-1"], "lr must be in (0, 1e+06]"), (["--lr", "nan"], "lr must be in (0, 1e+06]"),
    (["--weight-decay", "-1"], "weight_decay must be"), (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--device", "bogus"], "unknown device"), (["--device", "meta"], "cannot train on device 'meta'"),
    (["--limit", "0"], "limit must be >= 1"), (["--width", "-1"], "width must be in 1..16384"),
    (["--width", "0"], "width must be in 1..16384"), (["--seed", "-1"], "seed must be in"),
    (["--seed", str(2**70)], "seed must be in"), (["-e", "zstd:level=1.5"], "integer"),
])
def test_train_cli_rejects_bad_numbers_and_writes_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--epochs", "1", "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_out_that_is_a_file_and_resume_with_changes(tmp_path, capsys):
    afile = tmp_path / "f"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        assert main(["train", "--out", str(out), "--quiet"]) == 2
        assert "is a file" in capsys.readouterr().err
    assert afile.read_text() == "x"
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--width", "8", "-e", "lzma", "--quiet"]) == 0
    capsys.readouterr()
    for extra in (["--epochs", "5"], ["--method", "momos"]):
        assert main(["train", "--out", str(run), "--resume", *extra]) == 2
        assert "would change it" in capsys.readouterr().err
    assert kc_main(["demo", "--epochs", "-1"]) == 2 and "--epochs must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------ 14. compare on damaged runs
def test_compare_on_damaged_runs_is_clear(tmp_path, capsys):
    good = tmp_path / "good"
    train(TrainConfig(**FAST), good, quiet=True)
    cases = {}
    for name in ("garbage", "nulls", "badresult", "listconfig", "nomethod"):
        cases[name] = tmp_path / name
        import shutil

        shutil.copytree(good, cases[name])
    (cases["garbage"] / "log.jsonl").write_text("xx\n{bad\n")
    (cases["nulls"] / "log.jsonl").write_text('{"epoch": 0, "complexity": null, "details": 5}\n')
    (cases["badresult"] / "result.json").write_text("[1")
    (cases["listconfig"] / "config.json").write_text("[1, 2]")
    (cases["nomethod"] / "config.json").write_text('{"config": {"model": "mlp"}}')
    afile = tmp_path / "afile"
    afile.write_text("")
    for bad, needle in ((cases["garbage"], "no logged epochs"), (cases["badresult"], "result.json"),
                        (cases["listconfig"], "not a momos run config"), (afile, "is a file")):
        assert main(["compare", str(good), str(bad)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    assert main(["compare", str(good), str(cases["nulls"]), str(cases["nomethod"])]) == 0
    capsys.readouterr()
    for plot, needle in ((tmp_path, "is a directory"), (tmp_path / "x.xyz", "ending in"),
                         (tmp_path / "no" / "\0bad.png", "cannot write plot")):
        assert main(["compare", str(good), "--plot", str(plot)]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path.parent / (tmp_path.name + ".png")).exists()


# ------------------------------------------------------------------ 15/16. API inputs that used to escape
def test_api_inputs_raise_our_errors(tmp_path):
    from kcomplexity.callbacks import ComplexityLogger

    model = torch.nn.Linear(3, 3)
    bad_calls = [
        lambda: kc.score(torch.eye(3).to_sparse()), lambda: kc.score(torch.empty(3, device="meta")),
        lambda: kc.score([[1.0, 2.0], [3.0]]), lambda: kc.bdm(np.zeros(20, int), block="x"),
        lambda: kc.bdm([[1, 0], [1]]), lambda: momos.project(model, 2, capacity="abc"),
        lambda: momos.project(model, 2, capacity=0.5, memory_mb=float("nan")),
        lambda: momos.project(torch.nn.Linear(3, 3, device="meta"), 2, capacity=0.5),
        lambda: momos.project({"e": torch.empty(0)}, 2, capacity=0.5),
        lambda: kc.estimators.mdl.decode(b"\xff" * 9 + b"\x01\x02\x00\x01\x00"),
        lambda: ComplexityLogger(["lzma"], path=tmp_path / "missing" / "x.jsonl"),
    ]
    for call in bad_calls:
        with pytest.raises(kc.errors.KComplexityError):
            call()
    logger = ComplexityLogger(["lzma"], path=tmp_path / "c.jsonl")
    with pytest.raises(kc.errors.KComplexityError, match="not JSON"):
        logger.log(model, epoch=0, extra=object())
    assert logger.records == []  # nothing recorded that was not written
    # finite extremes and big-endian arrays score like any others
    extremes = np.array([1.7e308, -1.7e308, 0.0, 1.0] * 10)
    assert kc.score(extremes, "bdm-k").total["bdm-k"] > 0
    big = np.arange(10, dtype=">f4")
    assert kc.score(big, ["mdl"]).total["mdl"] == kc.score(big.astype("<f4"), ["mdl"]).total["mdl"]


# ------------------------------------------------------------------ 9. sizes that files claim
def test_claimed_sizes_are_checked_before_allocating(tmp_path):
    import io
    from numpy.lib import format as npformat

    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    (tmp_path / "big.npy").write_bytes(buf.getvalue() + b"\0" * 40)
    with pytest.raises(kc.errors.CorruptFileError, match="claims"):
        kc.score(str(tmp_path / "big.npy"))
    good = io.BytesIO()
    np.save(good, np.ones(10, np.float32))
    (tmp_path / "dmg.npy").write_bytes(good.getvalue()[:10] + b"{'descr': <f4'" + good.getvalue()[24:])
    with pytest.raises(kc.errors.CorruptFileError, match="header"):
        kc.score(str(tmp_path / "dmg.npy"))
    big_const = kc.encode_quantized(np.zeros(1000, np.float32), rel=0.1)
    with pytest.raises(kc.errors.CorruptFileError, match="max_values"):
        kc.decode_quantized(big_const, max_values=999)


def test_a_damaged_pt_entry_fails_its_crc(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    raw = bytearray(path.read_bytes())
    pos = raw.find(np.arange(1000, dtype=np.float32).tobytes()[400:420])
    raw[pos] ^= 0xFF  # one byte of tensor data, sizes and headers intact
    path.write_bytes(bytes(raw))
    with pytest.raises(kc.errors.CorruptFileError, match="CRC"):
        kc.score(str(path))


def test_a_second_ctrl_c_ends_quietly(tmp_path):
    import signal

    # a shell's background job starts with SIGINT ignored, and Python then keeps ignoring it: the child installs
    # Python's own Ctrl-C handler first, as an interactive start would have (no preexec_fn: unsafe with threads)
    launch = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "sys.argv[0] = 'momos'; runpy.run_module('momos', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", launch, "train", "--out", str(tmp_path / "r"), "--epochs", "50",
                             "--width", "16", "-e", "lzma", "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "r" / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130 from our handler, or -SIGINT when the second Ctrl-C lands after Python restored default handlers
    assert proc.returncode in (130, -signal.SIGINT) and "Traceback" not in err and "interrupted" in err


def test_npz_bombs_and_unsupported_members_are_refused(tmp_path):
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, a=np.zeros(80_000_000, np.float32))  # 320 MB of zeros in ~300 kB
    with pytest.raises(kc.errors.CorruptFileError, match="zip bomb"):
        kc.score(str(bomb))
    odd = tmp_path / "odd.npz"
    np.savez(odd, a=np.ones(10, np.float32))
    raw = bytearray(odd.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # compression method of the local and central headers
        pos = raw.find(sig)
        raw[pos + off:pos + off + 2] = (99).to_bytes(2, "little")
    odd.write_bytes(bytes(raw))
    with pytest.raises(kc.errors.CorruptFileError, match="npz"):
        kc.score(str(odd))
