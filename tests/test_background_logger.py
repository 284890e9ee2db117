"""``ComplexityLogger(background=True)`` (#30): the estimators run on a worker while the loop goes on, with the
same records as in the foreground, in call order, a bounded number of snapshots, and through both adapters."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kcomplexity.callbacks import ComplexityLogger, hf_callback, lightning_callback
from kcomplexity.errors import KComplexityError
from kcomplexity.estimators.base import Estimator

from test_callbacks import _data, _hf_model_and_data, _lightning_module


class Gated(Estimator):
    """A code length that waits for the test to open a gate: the worker is busy for as long as the test says."""

    name = "gated"
    description = "8 bits per value, once the gate opens"

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def _bits(self, a) -> float:
        assert self.gate.wait(60)
        return 8.0 * a.data.size


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _nudge(model: torch.nn.Module, step: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(step)) * 0.05)


def test_background_records_equal_the_foreground_ones(tmp_path):
    x, y = _data()

    @torch.no_grad()
    def loss_fn(m):
        return float(torch.nn.functional.cross_entropy(m(x[:256]), y[:256]))

    ests = ["lzma", "zstd", "quant", "delta", "intrinsic"]
    fg = ComplexityLogger(ests, tmp_path / "fg.jsonl", loss_fn=loss_fn)
    with ComplexityLogger(ests, tmp_path / "bg.jsonl", loss_fn=loss_fn, background=True) as bg:
        a, b = _net(0), _net(0)
        for step in range(4):
            _nudge(a, step), _nudge(b, step)
            fg.log(a, epoch=step, note="x")
            bg.log(b, epoch=step, note="x")
            _nudge(b, 100 + step)  # the loop trains on: the snapshot was taken at the call
            _nudge(a, 100 + step)
    keep = ("epoch", "complexity", "details", "note")
    lines = [[{k: r[k] for k in keep} for r in map(json.loads, open(tmp_path / f))] for f in ("fg.jsonl", "bg.jsonl")]
    assert lines[0] == lines[1] and len(lines[0]) == 4
    assert "delta" in lines[1][1]["complexity"] and lines[1][3]["details"]["intrinsic"]["evals"] >= 1
    assert all(r["waited_s"] >= 0 for r in bg.records)


def test_log_returns_while_the_estimators_run_and_records_keep_call_order(tmp_path):
    gate = threading.Event()
    logger = ComplexityLogger([Gated(gate), "zstd"], tmp_path / "log.jsonl", background=True, max_pending=2)
    model = _net(1)
    futures = [logger.log(model, epoch=e) for e in (7, 3)]  # the first blocks the worker; the loop goes on
    assert not any(f.done() for f in futures) and not (tmp_path / "log.jsonl").exists()
    opener = threading.Timer(0.2, gate.set)
    opener.start()
    third = logger.log(model, epoch=5)  # two snapshots pending: this call waits for the oldest, and says so
    logger.close()
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "log.jsonl")] == [7, 3, 5]
    assert third.result()["waited_s"] > 0 and futures[0].result()["waited_s"] == 0
    n = sum(p.numel() for p in model.parameters())
    assert all(r["complexity"]["gated"] == 8.0 * n for r in logger.records)


def test_background_errors_surface_at_flush_and_bad_limits_are_refused(tmp_path):
    class Broken(Gated):
        name = "broken"

        def _bits(self, a) -> float:
            raise RuntimeError("estimator failed")

    logger = ComplexityLogger([Broken(threading.Event())], background=True)
    logger.log(_net(2), epoch=0)
    with pytest.raises(RuntimeError, match="estimator failed"):
        logger.close()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(KComplexityError, match="max_pending"):
            ComplexityLogger(["zstd"], background=True, max_pending=bad)


def test_lightning_and_hugging_face_adapters_with_a_background_logger(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    x, y = _data()

    Module = _lightning_module(pl)

    csv = pl.loggers.CSVLogger(tmp_path, name="csv")
    logger = ComplexityLogger(["lzma"], background=True)
    trainer = pl.Trainer(max_epochs=3, logger=csv, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
                         callbacks=[lightning_callback(logger)])
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=256))
    assert [r["epoch"] for r in logger.records] == [0, 1, 2]
    import pandas as pd

    metrics = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    assert sorted(metrics["complexity/epoch"].dropna().astype(int)) == [0, 1, 2]
    np.testing.assert_allclose(sorted(metrics["complexity/lzma"].dropna()),
                               sorted(r["complexity"]["lzma"] for r in logger.records))

    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    Model, DS = _hf_model_and_data()
    hf_logger = ComplexityLogger(["zstd"], background=True)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2,
                                          per_device_train_batch_size=64, report_to=[], save_strategy="no",
                                          logging_strategy="no", use_cpu=True, disable_tqdm=True)
    hf = transformers.Trainer(model=Model(), args=args, train_dataset=DS(), callbacks=[hf_callback(hf_logger)])
    hf.train()
    assert [r["epoch"] for r in hf_logger.records] == [1, 2]
    reported = [h for h in hf.state.log_history if "complexity/epoch" in h]
    assert sorted(h["complexity/epoch"] for h in reported) == [1.0, 2.0]
