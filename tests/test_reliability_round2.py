"""Reliability, second round (issue #21): hangs and tracebacks fixed by one rule each."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from kcomplexity import float_code
from kcomplexity.bitio import read_varint, varint
from kcomplexity.errors import CorruptFileError
from momos.config import TrainConfig
from momos.errors import RunError
from momos.trainer import train


# ------------------------------------------------------------------ 7. stale distributed variables
@pytest.mark.parametrize("env", [{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"},
                                 {"RANK": "5", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                                  "MASTER_PORT": "29500"}])
def test_stale_distributed_variables_fail_at_once(tmp_path, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    t = time.perf_counter()
    with pytest.raises(RunError, match="RANK"):
        train(TrainConfig(epochs=1, width=16, estimators=[], devices=2), tmp_path / "run", quiet=True)
    assert time.perf_counter() - t < 60  # not a wait for a peer that never comes
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 9. decoding stays linear
def test_varints_are_bounded_to_64_bits():
    assert read_varint(varint(2 ** 64 - 1), 0) == (2 ** 64 - 1, 10)
    for bad in (b"\xff" * 11 + b"\x01", varint(2 ** 70), b"\x80" * 100_000):
        with pytest.raises(CorruptFileError, match="longer than 64 bits"):
            read_varint(bad, 0)


def test_a_long_damaged_varint_is_rejected_in_linear_time():
    good = float_code.encode(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    for size in (10_000, 1_000_000):
        damaged = good[:5] + b"\xff" * size
        t = time.perf_counter()
        with pytest.raises(CorruptFileError):
            float_code.decode(damaged)
        assert time.perf_counter() - t < 5  # was quadratic: 104 s on 1.6 MB


# ------------------------------------------------------------------ 14. a closed pipe is not a traceback
@pytest.mark.parametrize("argv", [["kcomplexity", "estimators"], ["momos", "sweep", "--help"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv):
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes (as `| head -1` after one line)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (141, 0) and "Traceback" not in err and "BrokenPipe" not in err
