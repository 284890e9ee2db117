"""Multi-process training (torch.distributed, gloo over 127.0.0.1): identical ranks, one log, resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


from momos.cli import main
from momos.trainer import read_log

ARGS = ["--method", "momos", "--width", "32", "-e", "lzma,mdl", "--quiet", "--devices", "2"]


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_two_processes_hold_identical_weights_and_write_one_log(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "3", *ARGS]) == 0
    log = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    for r in log:
        sums = r["rank_checksums"]
        assert len(sums) == 2 and sums[0] == sums[1]
    assert log[-1]["projection"]["k"] >= 1
    assert json.loads((run / "config.json").read_text())["config"]["devices"] == 2
    assert json.loads((run / "result.json").read_text())["test_acc"] > 0


def test_two_process_run_resumes_after_a_kill(tmp_path):
    ref = tmp_path / "ref"
    assert main(["train", "--out", str(ref), "--epochs", "5", *ARGS]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "momos", "train", "--out", str(run), "--epochs", "5", *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(read_log(run / "log.jsonl")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher; its ranks die with it
    proc.wait()
    time.sleep(1.0)
    res = subprocess.run([sys.executable, "-m", "momos", "train", "--resume", "--out", str(run), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    log = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in log] == list(range(6))
    assert all(r["rank_checksums"][0] == r["rank_checksums"][1] for r in log)
    assert _strip(log) == _strip(read_log(ref / "log.jsonl"))


def test_devices_must_be_positive(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--devices", "0", "--quiet"]) == 2
    assert "devices must be in 1..256" in capsys.readouterr().err
