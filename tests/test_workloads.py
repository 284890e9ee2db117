"""The paper's workloads (#30): flip-crop augmentation and normalisation, ``--recipe paper``, mixed precision on
CPU, and their bad inputs; trained for real on digits and on CIFAR-format files written here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from momos import augment, data
from momos.cli import main
from momos.config import TrainConfig
from momos.errors import MoMosError
from momos.official_files import CIFAR_FOLDER, CIFAR_TEST, CIFAR_TRAIN
from momos.trainer import read_log, train

from test_official_files import _batch

FAST = {"model": "mlp", "data": "digits", "epochs": 2, "width": 16, "estimators": ["zstd"]}


def _strip_times(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def _cifar_folder(root):
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True)
    for i, name in enumerate([*CIFAR_TRAIN, CIFAR_TEST]):
        (folder / name).write_bytes(_batch(i))
    return root


# ------------------------------------------------------------------ augmentation
def test_flip_crop_moves_each_pixel_as_specified():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((6, 3, 5, 7), dtype=np.float32))
    fill = (-1.0, -2.0, -3.0)
    fc = augment.FlipCrop(fill, pad=2)
    flip = torch.tensor([False, True, False, True, False, True])
    top = torch.tensor([0, 0, 4, 2, 1, 3])
    left = torch.tensor([0, 4, 0, 2, 3, 1])
    out = fc.apply(x, flip, top, left).numpy()
    for i in range(6):
        img = x[i].numpy()[:, :, ::-1] if flip[i] else x[i].numpy()  # the flip first, as the official transform
        padded = np.empty((3, 5 + 4, 7 + 4), np.float32)
        padded[:] = np.array(fill, np.float32)[:, None, None]
        padded[:, 2:7, 2:9] = img
        expect = padded[:, int(top[i]):int(top[i]) + 5, int(left[i]):int(left[i]) + 7]
        np.testing.assert_array_equal(out[i], expect)
    assert out[2, :, -1, 0].tolist() == list(fill)  # crop at the bottom: its last row is padding


def test_the_same_seed_draws_the_same_crops_and_padding_is_a_normalised_black_pixel(tmp_path):
    fc = augment.FlipCrop((0.0,))
    a = fc.draw(1000, torch.Generator().manual_seed(5))
    b = fc.draw(1000, torch.Generator().manual_seed(5))
    c = fc.draw(1000, torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[1], c[1])
    assert 0.4 < float(a[0].float().mean()) < 0.6 and set(a[1].tolist()) == set(range(9))
    ds = data.load("cifar10", data_dir=str(_cifar_folder(tmp_path)), normalize="official")
    mean, std = data.CIFAR10_STATS
    assert ds.black == pytest.approx([-m / s for m, s in zip(mean, std)], rel=1e-6)
    raw = data.load("cifar10", data_dir=str(tmp_path))
    np.testing.assert_array_equal(  # the official Normalize, in float32
        ds.train.x.numpy(), ((raw.train.x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)))


def test_cifar10_defaults_to_the_official_transform_and_resumes_exactly(tmp_path):
    root = _cifar_folder(tmp_path / "data")
    cfg = TrainConfig(model="mlp", data="cifar10", data_dir=str(root), epochs=3, width=8, estimators=["zstd"],
                      batch_size=16)
    full = train(cfg, tmp_path / "full", quiet=True)
    stored = json.loads((tmp_path / "full" / "config.json").read_text())["config"]
    assert stored["augment"] == "flip-crop" and stored["normalize"] == "official"

    class StopAfterEpoch1:  # an interrupt while epoch 2 trains: its checkpoint is not yet written
        def start(self, *a): pass
        def finish(self, *a): pass
        def log(self, record):
            if record["epoch"] == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", quiet=True, trackers=[StopAfterEpoch1()])
    train({}, tmp_path / "cut", resume=True, quiet=True)
    assert _strip_times(read_log(tmp_path / "cut" / "log.jsonl")) == _strip_times(read_log(full.run_dir / "log.jsonl"))
    # without the augmentation the run trains differently
    plain = train(TrainConfig(**{**cfg.to_json(), "augment": "none"}), tmp_path / "plain", quiet=True)
    assert read_log(plain.run_dir / "log.jsonl")[1]["train_loss"] != read_log(full.run_dir / "log.jsonl")[1]["train_loss"]


# ------------------------------------------------------------------ the paper's recipe
#: the official code's values (src/configs.py, src/datasets.py), written out here independently of momos.recipes
PAPER = {
    ("resnet20", "cifar10"): {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 200,
                              "batch_size": 128, "schedule": "cosine", "augment": "flip-crop",
                              "normalize": "official", "image_size": 32},
    ("mlp", "cifar10"): {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "epochs": 200, "batch_size": 128,
                         "schedule": "cosine", "augment": "flip-crop", "normalize": "official", "image_size": 32},
    ("vit", "cifar10"): {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "epochs": 200, "batch_size": 128,
                         "schedule": "cosine", "augment": "flip-crop", "normalize": "official", "image_size": 32},
    ("mlp", "fashion-mnist"): {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "epochs": 200,
                               "batch_size": 128, "schedule": "cosine", "augment": "none", "normalize": "official",
                               "image_size": 32},
    ("mlp", "mnist"): {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-2, "epochs": 200, "batch_size": 128,
                       "schedule": "cosine", "augment": "none", "normalize": "official", "image_size": 32},
}


@pytest.mark.parametrize("model,dataset", list(PAPER))
def test_recipe_paper_sets_the_official_values_and_flags_override_them(model, dataset):
    cfg = TrainConfig(model=model, data=dataset, recipe="paper").resolved()
    assert {k: getattr(cfg, k) for k in PAPER[model, dataset]} == PAPER[model, dataset]
    short = TrainConfig(model=model, data=dataset, recipe="paper", epochs=3, lr=0.05).resolved()
    assert (short.epochs, short.lr, short.optimizer) == (3, 0.05, PAPER[model, dataset]["optimizer"])


def test_recipe_paper_trains_and_is_written_into_the_config(tmp_path):
    root = _cifar_folder(tmp_path / "data")
    assert main(["train", "--model", "resnet20", "--data", "cifar10", "--recipe", "paper", "--data-dir", str(root),
                 "--epochs", "1", "--width", "4", "--estimators", "zstd", "--quiet", "--out", str(tmp_path / "r")]) == 0
    stored = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert stored["recipe"] == "paper" and stored["epochs"] == 1
    assert {k: stored[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "augment", "normalize")} == {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "augment": "flip-crop",
        "normalize": "official"}


# ------------------------------------------------------------------ precision
def test_bf16_trains_on_cpu_with_float32_weights_everywhere(tmp_path):
    run = tmp_path / "bf16"
    train(TrainConfig(**FAST, method="momos", precision="bf16"), run, quiet=True)
    fp32 = train(TrainConfig(**FAST, method="momos"), tmp_path / "fp32", quiet=True)
    log, ref = read_log(run / "log.jsonl"), read_log(fp32.run_dir / "log.jsonl")
    assert log[-1]["train_loss"] != ref[-1]["train_loss"]  # autocast ran: bf16 matmuls round differently
    assert abs(log[-1]["train_loss"] - ref[-1]["train_loss"]) < 0.05  # and it trained the same task
    assert all(r["complexity"]["zstd"] > 0 for r in log)
    for f in (run / "best.safetensors", *(run / "checkpoints").glob("epoch-*/model.safetensors")):
        assert {t.dtype for t in load_file(str(f)).values()} == {torch.float32}, f


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("flags,message", [
    (["--precision", "fp16"], "fp16 needs a CUDA device"),
    (["--precision", "fp8"], "unknown precision"),
    (["--recipe", "paper", "--model", "cnn"], "the paper did not train 'cnn'"),
    (["--recipe", "paper"], "the paper did not train on 'digits'"),
    (["--augment", "flip-crop", "--model", "grok-mlp", "--data", "modadd"], "needs image inputs"),
    (["--augment", "rotate"], "unknown augment"),
    (["--normalize", "official"], "digits has no official normalisation"),
])
def test_bad_workload_settings_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_run_stored_before_these_settings_resumes_without_augmentation():
    old = {k: v for k, v in TrainConfig(data="cifar10").to_json().items()
           if k not in ("augment", "normalize", "image_size", "precision", "recipe")}
    cfg = TrainConfig.from_stored(old).resolved()
    assert (cfg.augment, cfg.normalize, cfg.precision) == ("none", "none", "fp32")
    with pytest.raises(MoMosError, match="unknown augment"):
        TrainConfig(augment="mixup").resolved()
