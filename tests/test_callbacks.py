"""ComplexityLogger in a plain loop, and the Lightning / Hugging Face adapters (when installed)."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import kcomplexity as kc
from kcomplexity.callbacks import ComplexityLogger, hf_callback, lightning_callback


def _data():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:256] / 16.0, dtype=torch.float32), torch.tensor(y[:256])


def test_plain_loop_appends_fsynced_lines(tmp_path):
    x, y = _data()
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logger = ComplexityLogger(["lzma", "bdm", "mdl:s=4"], path=tmp_path / "c.jsonl")
    for epoch in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        logger.log(model, epoch=epoch, note="x")
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert set(lines[0]["complexity"]) == {"lzma", "bdm", "mdl:s=4"} and lines[0]["note"] == "x"
    expect = kc.score(model, ["lzma"], whole=True).total["lzma"]
    assert lines[-1]["complexity"]["lzma"] == expect


def test_unknown_estimator_fails_at_construction():
    with pytest.raises(kc.errors.UnknownEstimatorError):
        ComplexityLogger(["lzma", "nope"])


def _lightning_module(pl):
    """A linear classifier on digits as a LightningModule of ``pl`` (SGD, lr 0.1)."""
    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(64, 10)

        def training_step(self, batch, _):
            xb, yb = batch
            return torch.nn.functional.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Module


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_adapters(package, tmp_path):
    pl = pytest.importorskip(package)
    x, y = _data()
    Module = _lightning_module(pl)
    logger = ComplexityLogger(["lzma", "bdm"])
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
                         callbacks=[lightning_callback(logger, package)])
    trainer.fit(Module(), DataLoader(TensorDataset(x, y), batch_size=64))
    assert [r["epoch"] for r in logger.records] == [0, 1]
    assert logger.records[0]["complexity"]["lzma"] > 0


def _hf_model_and_data():
    """A linear classifier on digits in the shape a Hugging Face Trainer expects: (Model class, Dataset class)."""
    x, y = _data()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(64, 10)

        def forward(self, inputs, labels=None):
            logits = self.net(inputs)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"inputs": x[i], "labels": y[i]}
    return Model, DS


def test_hugging_face_adapter(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    Model, DS = _hf_model_and_data()

    logger = ComplexityLogger(["zstd", "bdm"])
    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=64,
                                          report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                          disable_tqdm=True)
    transformers.Trainer(model=Model(), args=args, train_dataset=DS(), callbacks=[hf_callback(logger)]).train()
    assert [r["epoch"] for r in logger.records] == [1, 2]


def _distinct_blocks(model: torch.nn.Module, s: int) -> int:
    return kc.mdl(model, s=s).k


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_momos_projects_each_epoch_and_logs_through_lightning(package, tmp_path):
    pl = pytest.importorskip(package)
    from momos.callbacks import lightning_momos

    x, y = _data()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, batch, _):
            xb, yb = batch
            return torch.nn.functional.cross_entropy(self.net(xb), yb)

        def on_validation_epoch_start(self):
            seen.append(_distinct_blocks(self, 2))  # validation of every epoch sees the projected weights

        def validation_step(self, batch, _):
            xb, yb = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(xb), yb))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    seen: list[int] = []
    momos_cb = lightning_momos(s=2, capacity=0.05, seed=3, package=package)
    logger = ComplexityLogger(["lzma", "quant"])
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path,
                         callbacks=[momos_cb, lightning_callback(logger, package)])
    module = Module()
    trainer.fit(module, loader, loader)
    k = int(trainer.callback_metrics["momos/k"])
    ragged = sum(p.numel() % 2 for p in module.parameters())
    assert 1 <= k and _distinct_blocks(module, 2) <= k + ragged
    sanity = len(seen) - 2  # Lightning's sanity check validates the initial weights first
    assert len(seen[sanity:]) == 2 and all(d <= k + ragged for d in seen[sanity:])
    assert trainer.callback_metrics["complexity/lzma"] > 0 and "complexity/quant/mse" in trainer.callback_metrics
    # one projection per epoch with momos train's seeded projector: the same generator state after 2 epochs
    from momos import MoMos

    assert torch.equal(momos_cb.projector.state_dict()["generator"],
                       _advanced(MoMos(2, 0.05, seed=3), module, 2).state_dict()["generator"])
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)
    assert state["momos_mosaic"]["s"] == 2 and state["momos_mosaic"]["motifs"].shape[1] == 2


def _advanced(projector, module, epochs):
    """A fresh projector stepped through as many projections on a copy of the module."""
    import copy

    clone = copy.deepcopy(module)
    for _ in range(epochs):
        projector(clone)
    return projector


def test_hf_momos_projects_and_logs(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from momos.callbacks import hf_momos

    Model, DS = _hf_model_and_data()

    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=64,
                                          report_to=[], save_strategy="epoch", logging_strategy="no", use_cpu=True,
                                          disable_tqdm=True)
    model = Model()
    momos_cb = hf_momos(s=2, capacity=0.05)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(),
                                   callbacks=[momos_cb, hf_callback(ComplexityLogger(["zstd"]))])
    momos_cb.trainer = trainer
    trainer.train()
    logged = [h for h in trainer.state.log_history if "momos/k" in h]
    assert len(logged) == 2
    k = int(logged[-1]["momos/k"])
    assert _distinct_blocks(model, 2) <= k + sum(p.numel() % 2 for p in model.parameters())
    assert any("complexity/zstd" in h for h in trainer.state.log_history)
    saved = sorted(tmp_path.glob("checkpoint-*/momos_mosaic.pt"))
    assert saved and torch.load(saved[-1], weights_only=True)["s"] == 2
