"""The grokking experiment with the defaults of `momos train --model grok-mlp --data modadd`.

Two real runs (about 3 minutes each on 2 cores): with weight decay 1.0 the
network memorises, then generalises, and its intrinsic complexity falls
while raw lzma barely moves; without weight decay it stays complex.
"""
from __future__ import annotations

import pytest

from momos.config import TrainConfig
from momos.trainer import read_log, train


@pytest.fixture(scope="module")
def grok_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grok")
    logs = {}
    for wd in (None, 0.0):  # None: the profile's weight decay 1.0
        cfg = TrainConfig(model="grok-mlp", data="modadd", weight_decay=wd, estimators=["lzma", "intrinsic"])
        result = train(cfg, root / f"wd{wd}", quiet=True)
        logs[wd] = (result, read_log(root / f"wd{wd}" / "log.jsonl"))
    return logs


def test_defaults_grok_and_intrinsic_falls_while_lzma_stays_flat(grok_runs):
    result, log = grok_runs[None]
    assert result.test_acc >= 0.95 and log[-1]["val_acc"] >= 0.95
    intrinsic = [r["complexity"]["intrinsic"] for r in log]
    assert max(intrinsic) >= 2 * intrinsic[-1]
    assert all(r["details"]["intrinsic"]["within_budget"] for r in log)
    lzma = [r["complexity"]["lzma"] for r in log]
    assert (max(lzma) - min(lzma)) / min(lzma) < 0.05


def test_without_weight_decay_it_memorises_and_stays_complex(grok_runs):
    _, log_wd = grok_runs[None]
    _, log_0 = grok_runs[0.0]
    assert log_0[-1]["train_acc"] == 1.0 and log_0[-1]["val_acc"] < 0.5
    assert log_0[-1]["complexity"]["intrinsic"] >= 2 * log_wd[-1]["complexity"]["intrinsic"]
