"""score() totals, the Report's tables and JSON schema, and the CLI (including its errors)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import kcomplexity as kc
from kcomplexity.cli import main


def test_frame_totals_and_ratios(small_model):
    rep = kc.score(small_model, ["lzma", "zstd"])
    df = rep.to_frame()
    assert list(df.columns) == ["numel", "lzma", "zstd"]
    assert df.index.name == "tensor" and list(df.index) == rep.names
    assert df["numel"].sum() == sum(p.numel() for p in small_model.parameters())
    for est in ("lzma", "zstd"):
        assert rep.total[est] == pytest.approx(df[est].sum())
        summ = rep.summary().loc[est]
        assert summ["bits_per_param"] == pytest.approx(rep.total[est] / rep.total_numel)
        assert summ["ratio"] == pytest.approx(32 * rep.total_numel / rep.total[est])
    np.testing.assert_allclose(rep.ratio()["lzma"], 32 * df["numel"] / df["lzma"])
    np.testing.assert_allclose(rep.bits_per_param()["zstd"], df["zstd"] / df["numel"])


def test_whole_is_codelength_of_concatenation(rng):
    block = rng.standard_normal(512).astype(np.float32)
    tensors = {f"t{i}": torch.from_numpy(block.copy()) for i in range(6)}
    per = kc.score(tensors, ["lzma"])
    whole = kc.score(tensors, ["lzma"], whole=True)
    # six copies of one block: concatenated, lzma codes the repeats almost for free
    assert whole.total["lzma"] < 0.3 * per.total["lzma"]
    cat = np.concatenate([block] * 6)
    assert whole.total["lzma"] == kc.estimators.get("lzma").bits(cat)
    assert whole.to_frame()["lzma"].sum() == per.total["lzma"]


def test_json_schema(small_model):
    rep = kc.score(small_model, ["lzma", "bdm-planes"])
    d = json.loads(rep.to_json())
    assert set(d["tensors"]) == set(rep.names)
    t = d["tensors"]["0.weight"]
    assert t["numel"] == 32 * 16 and t["dtype"] == "float32"
    assert set(t["bits"]) == {"lzma", "bdm-planes"}
    assert d["tensors"]["0.bias"]["bits"]["bdm-planes"] is None  # not applicable to 1-D
    assert d["total"]["lzma"] == pytest.approx(sum(v["bits"]["lzma"] for v in d["tensors"].values()))
    assert d["total"]["bdm-planes"] == pytest.approx(rep.total["bdm-planes"]) and not math.isnan(rep.total["bdm-planes"])


def test_csv_has_total_row(small_model):
    import io

    df = pd.read_csv(io.StringIO(kc.score(small_model, "lzma").to_csv()), index_col=0)
    assert df.index[-1] == "(total)"
    assert df.loc["(total)", "lzma"] == pytest.approx(df["lzma"].iloc[:-1].sum())


@pytest.fixture
def weights_file(tmp_path, state):
    path = tmp_path / "m.safetensors"
    save_file(state, path)
    return path


def test_cli_json(weights_file, capsys):
    assert main(["score", str(weights_file), "-e", "lzma,zstd:level=3", "-f", "json", "-q"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["total"]) == {"lzma", "zstd:level=3"}
    assert all(v["dtype"] == "float32" for v in d["tensors"].values())


def test_cli_table_csv_and_output_file(weights_file, tmp_path, capsys):
    assert main(["score", str(weights_file), "-q"]) == 0
    out = capsys.readouterr().out
    assert "bits per parameter" in out and "lzma" in out
    target = tmp_path / "r.csv"
    assert main(["score", str(weights_file), "--whole", "-f", "csv", "-o", str(target), "-q"]) == 0
    assert target.read_text().splitlines()[0].startswith("tensor,numel,dtype,lzma,zstd")


@pytest.mark.parametrize("args,needle", [
    (["score", "/no/such/file.safetensors"], "no such file"),
    (["score", "{weights}", "-e", "lz4"], "unknown estimator 'lz4'; available:"),
    (["score", "{bad}"], "not a valid safetensors file"),
])
def test_cli_errors_are_one_line(args, needle, weights_file, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    args = [a.format(weights=weights_file, bad=bad) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_subprocess_no_traceback(tmp_path):
    path = tmp_path / "nan.npy"
    np.save(path, np.array([1.0, np.nan], dtype=np.float32))
    res = subprocess.run([sys.executable, "-m", "kcomplexity", "score", str(path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("kcomplexity: error:") and "Traceback" not in res.stderr
    assert "NaN/Inf" in res.stderr


def test_cli_lists_estimators(capsys):
    assert main(["estimators"]) == 0
    out = capsys.readouterr().out
    assert "bdm-planes" in out and "[reference]" in out and "mdl" in out


def test_demo_trains_and_compares(capsys):
    assert main(["demo", "--epochs", "15", "-e", "lzma,bdm"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "init bits/param" in out and "trained bits/param" in out
    acc = float(out.split("held-out accuracy ")[1].split()[0])
    assert acc > 0.8  # real training on real digits
