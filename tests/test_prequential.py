"""Prequential codes of labels and the two-part total: real codes that decode, deterministic, honest costs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import kcomplexity as kc

from kcomplexity.codecs import labels as label_code
from kcomplexity.errors import CorruptFileError
from momos import data, models
from momos.cli import main
from momos.config import TrainConfig
from momos.errors import PrequentialError
from momos.prequential import (TrainOptions, decode, default_chunks, fine_chunks, fine_doubling, labels_in_order,
                               prequential, shifted, split_last)
from momos.trainer import train

WORD = 32  # the ANS code ends on whole 32-bit words; its state adds at most two


def _seeded_labels(name: str, seed: int, limit: int | None = None) -> np.ndarray:
    """The labels in the order the code sends them: train + validation splits, permuted by the seed."""
    return labels_in_order(name, seed, limit, None)[1].numpy()


def test_label_code_round_trips_in_segments_and_matches_the_ideal_length():
    rng = np.random.default_rng(0)
    segments = []
    for n, c in ((500, 10), (1, 10), (0, 10), (3000, 10)):
        probs = rng.dirichlet(np.full(c, 0.3), size=n)
        labels = np.array([rng.choice(c, p=p) for p in probs], dtype=np.int64)
        segments.append((probs, labels))
    code = label_code.encode_labels(segments)
    ideal = sum(label_code.ideal_bits(p, y) for p, y in segments)
    assert ideal - WORD <= 8 * len(code) <= ideal + 2 * WORD
    decoder = label_code.LabelDecoder(code)
    for probs, labels in segments:
        assert np.array_equal(decoder.decode(probs), labels)


def test_label_code_rejects_what_it_cannot_code():
    p = label_code.uniform(3, 4)
    with pytest.raises(label_code.LabelCodeError, match="0..3"):
        label_code.encode_labels([(p, np.array([0, 4, 1]))])
    with pytest.raises(label_code.LabelCodeError, match="sum to 1"):
        label_code.encode_labels([(p * 2, np.array([0, 1, 1]))])
    with pytest.raises(label_code.LabelCodeError, match="2 labels for 3"):
        label_code.encode_labels([(p, np.array([0, 1]))])
    with pytest.raises(CorruptFileError):
        label_code.LabelDecoder(b"\x01\x02\x03")


def test_prequential_mlp_on_digits_is_a_real_code_that_decodes():
    r = prequential("mlp", "digits", quiet=True)
    y = _seeded_labels("digits", 0)
    assert r.n == len(y) == 1527 and [c.end for c in r.chunks] == [*default_chunks(1527), 1527]
    first = r.chunks[0]
    assert first.model == "uniform" and first.bits == pytest.approx(64 * math.log2(10))
    assert all(c.trained_on == c.start - c.start // 10 for c in r.chunks[1:])  # every tenth label held out
    assert r.ideal_bits - WORD <= r.stream_bits <= r.ideal_bits + 2 * WORD
    assert r.total_bits == r.header_bits + r.stream_bits and 0 < r.header_bits <= 8 * 24  # side information, counted
    assert r.uniform_bits == pytest.approx(1527 * math.log2(10))
    assert r.ratio < 0.3  # a trained MLP codes digits' labels far below the uniform code
    assert r.chunks[-1].bits_per_label < 0.5 < r.chunks[1].bits_per_label
    assert np.array_equal(decode(r), y)
    out = r.to_json()
    assert {"chunks", "total_bits", "header_bits", "uniform_bits"} <= set(out) and len(out["chunks"]) == len(r.chunks)


def test_the_header_carries_every_option_and_decoding_needs_nothing_else():
    from momos.prequential import header

    opts = TrainOptions(calibrate=True, warm_start=True, augment=2, ensemble=4, lr=3e-4, patience=5)
    labels = np.arange(60000) % 10
    data = header.encode("mnist", ["cnn", "mlp"], 7, None, [64, 128, 46000], opts, labels)
    side, pos = header.decode(data + b"rest")
    # 36 bytes: two models, three boundaries, four options; then the label count (3 bytes) and CRC-32 (4)
    assert pos == len(data) and len(data) <= 47
    assert side == {"data": "mnist", "models": ["cnn", "mlp"], "seed": 7, "limit": None, "chunks": [64, 128, 46000],
                    "options": opts, "n": 60000, "crc": header.labels_crc(labels)}
    plain = header.encode("digits", ["mlp"], 0, 300, 0, TrainOptions(), labels[:300])
    assert header.decode(plain)[0]["chunks"] == 0 and len(plain) == 25  # a named schedule: one byte
    for damaged in (data[:5], b"\x09" + data[1:], data[:-1]):
        with pytest.raises(PrequentialError):
            header.decode(damaged)
    # the options come from the code, not from the result: the bytes alone decode
    r = prequential("mlp", "digits", limit=300, calibrate=True, chunks=[64, 150], quiet=True)
    assert np.array_equal(decode(bytes(r.code)), _seeded_labels("digits", 0, 300))
    # a named schedule is one byte: the last chunk split in two (256..300 -> 256..278..300)
    assert split_last(300) == [64, 128, 256, 278]
    s = prequential("mlp", "digits", limit=300, chunks=split_last(300), quiet=True)
    assert header.decode(s.code)[0]["chunks"] == 1 and s.header_bits == 8 * 25
    assert np.array_equal(decode(bytes(s.code)), _seeded_labels("digits", 0, 300))


def test_named_schedules_and_the_sqrt2_schedule():
    from momos.prequential import header

    assert fine_chunks(1000) == [64, 91, 128, 181, 256, 362, 512, 724]
    assert fine_chunks(60000)[-1] == 46341 and len(fine_chunks(60000)) == 20
    ratios = np.diff(np.log2(fine_chunks(60000)))
    assert np.allclose(ratios, 0.5, atol=0.03)  # each boundary sqrt 2 times the last
    f = prequential("mlp", "digits", limit=300, chunks="fine", quiet=True)
    assert [c.end for c in f.chunks] == [64, 91, 128, 181, 256, 300] and header.decode(f.code)[0]["chunks"] == 2
    assert f.header_bits == 8 * 25 and np.array_equal(decode(bytes(f.code)), _seeded_labels("digits", 0, 300))
    # sqrt 2 below a quarter of the labels, then doubling: the large (slow) chunks stay few
    assert fine_doubling(60000) == fine_chunks(15000) + [23170, 46340]
    assert fine_doubling(600) == [64, 91, 128, 256, 512] and fine_doubling(100) == [64] and fine_doubling(64) == []
    g = prequential("mlp", "digits", limit=600, chunks="fine-doubling", quiet=True)
    assert [c.end for c in g.chunks] == [64, 91, 128, 256, 512, 600] and header.decode(g.code)[0]["chunks"] == 3
    assert np.array_equal(decode(bytes(g.code)), _seeded_labels("digits", 0, 600))
    with pytest.raises(PrequentialError, match="unknown chunk schedule 'halving'"):
        prequential("mlp", "digits", limit=300, chunks="halving", quiet=True)


def test_same_seed_same_code_other_seed_other_order():
    a = prequential("mlp", "digits", limit=600, quiet=True)
    b = prequential("mlp", "digits", limit=600, quiet=True)
    c = prequential("mlp", "digits", limit=600, seed=1, quiet=True)
    assert a.code == b.code and [x.bits for x in a.chunks] == [x.bits for x in b.chunks]
    assert a.code != c.code


def test_switching_costs_at_most_the_best_model_plus_the_index_bits():
    kw = dict(data="digits", limit=800, quiet=True)
    singles = {m: prequential(m, **kw) for m in ("mlp", "cnn")}
    switched = prequential(["mlp", "cnn"], **kw)
    coded = len(switched.chunks) - 1  # every chunk after the uniform first names its model in one bit
    best = min(singles.values(), key=lambda r: r.ideal_bits)
    assert switched.ideal_bits <= best.ideal_bits + coded * math.log2(2) + 1e-9
    assert switched.stream_bits <= best.stream_bits + coded + 2 * WORD
    assert {c.model for c in switched.chunks[1:]} <= {"mlp", "cnn"}


def test_calibration_and_warm_start_decode_too():
    r = prequential(["mlp", "cnn"], "digits", limit=400, calibrate=True, warm_start=True, anneal=True, quiet=True)
    assert all(0.5 <= c.temperature <= 10 for c in r.chunks[1:])
    assert r.options["calibrate"] and r.options["warm_start"] and r.options["anneal"]
    assert np.array_equal(decode(r), _seeded_labels("digits", 0, 400))


def test_shifted_moves_each_image_whole_pixels_and_repeats_the_edge():
    images = torch.rand(64, 2, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = shifted(images, 2, gen)
    assert out.shape == images.shape and torch.equal(shifted(images, 0, gen), images)
    assert torch.equal(out, shifted(images, 2, torch.Generator().manual_seed(0)))  # seeded
    moves = set()
    for src, dst in zip(images, out):  # each output is its own image moved by some (dy, dx) in [-2, 2]
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(dst[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)],
                                src[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)])]
        assert found
        moves.add(found[0])
    assert len(moves) > 10  # the shifts differ from image to image
    flat = torch.zeros(3, 1, 6, 6) + torch.arange(3.0)[:, None, None, None]
    assert torch.equal(shifted(flat, 2, gen), flat)  # the uncovered border repeats the edge (the background)


def test_augmented_code_decodes_and_bad_augment_is_refused():
    r = prequential("cnn", "digits", limit=300, augment=1, quiet=True)
    assert r.options["augment"] == 1 and r.ratio < 1
    assert r.code != prequential("cnn", "digits", limit=300, quiet=True).code
    assert np.array_equal(decode(r), _seeded_labels("digits", 0, 300))
    with pytest.raises(PrequentialError, match="augment"):
        prequential("cnn", "digits", augment=-1, quiet=True)


def test_an_ensemble_codes_with_its_members_mean_and_decodes():
    kw = dict(data="digits", limit=400, calibrate=True, warm_start=True, quiet=True)
    one, two = prequential("mlp", **kw), prequential("mlp", ensemble=2, **kw)
    assert two.options["ensemble"] == 2 and two.code != one.code
    # member 0 is the single network: same seed, same training; the ensemble adds a second and averages
    assert two.chunks[1].bits != one.chunks[1].bits
    assert np.array_equal(decode(two), _seeded_labels("digits", 0, 400))
    with pytest.raises(PrequentialError, match="ensemble"):
        prequential("mlp", "digits", ensemble=0, quiet=True)


@pytest.mark.parametrize("chunks, match", [([128, 64], "increase"), ([64, 5000], "exceeds"),
                                           ([5, 64], "early stopping"), ([64.5], "whole")])
def test_bad_chunk_boundaries(chunks, match):
    with pytest.raises(PrequentialError, match=match):
        prequential("mlp", "digits", chunks, quiet=True)


def test_unknown_model_or_data_and_a_model_that_returns_nan(tmp_path):
    with pytest.raises(PrequentialError, match="unknown model"):
        prequential("nope", "digits", quiet=True)
    with pytest.raises(data.DataError, match="unknown data set"):
        prequential("mlp", "nope", quiet=True)

    class NaNNet(torch.nn.Module):
        def __init__(self, classes: int) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(64, classes)

        def forward(self, x):
            return self.lin(x.flatten(1)) * float("nan")

    models.register_model("nan-net", lambda shape, classes, width: NaNNet(classes), {})
    try:
        with pytest.raises(PrequentialError, match="non-finite"):
            prequential("nan-net", "digits", limit=200, quiet=True)
        out = tmp_path / "report.json"
        assert main(["prequential", "--model", "nan-net", "--limit", "200", "-f", "json", "-o", str(out),
                     "--quiet"]) == 2
        assert not out.exists()  # nothing written half-way
    finally:
        del models.MODELS["nan-net"]


def test_cli_json_csv_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["prequential", "--model", "mlp", "--limit", "300", "--chunks", "64,128", "-f", "json",
                 "-o", str(out), "--plot", str(png), "--quiet"]) == 0
    rec = json.loads(out.read_text())
    assert [c["end"] for c in rec["chunks"]] == [64, 128, 300] and rec["total_bits"] < rec["uniform_bits"]
    assert png.stat().st_size > 1000
    assert main(["prequential", "--limit", "300", "--chunks", "64", "-f", "csv", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("start,end,trained_on")
    assert main(["prequential", "--chunks", "64,x", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "whole-number boundaries or a schedule (doubling, split-last, fine, fine-doubling)" in err


def test_cnn_is_a_registered_model():
    net = models.build("cnn", (1, 28, 28), 10)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert models.build("cnn", (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(models.MoMosError, match="6x6"):
        models.build("cnn", (1, 4, 4), 10)


def test_two_part_total_of_runs_in_compare(tmp_path, capsys):
    runs = {}
    for method in ("baseline", "momos"):
        runs[method] = tmp_path / method
        train(TrainConfig(method=method, epochs=5, estimators=["zstd"]), runs[method], quiet=True)
        rec = json.loads((runs[method] / "two_part.json").read_text())
        assert rec["total_bits"] == rec["model_bits"] + rec["data_bits"] and rec["optimum"]
        assert rec["ideal_data_bits"] - WORD <= rec["data_bits"] <= rec["ideal_data_bits"] + 2 * WORD
        # 1,257 labels do not pay for an MLP's weights: the optimum crushes the model towards nothing
        assert rec["labels"] == 1257 and rec["data_bits"] > 0 and rec["mse"] > 0
        # the optimum over precision is the curve's minimum, no longer than the old fixed point at rel 0.1
        curve = {round(p["rel"], 12): p for p in rec["curve"]}
        assert rec["total_bits"] == min(p["total_bits"] for p in curve.values()) <= curve[0.1]["total_bits"]
        assert len(curve) >= 13 and rec["architecture_bits"] > 0
        # the labels with no model stand beside the total: 1,257 x log2 10 bits, as a real uniform code
        assert 1257 * math.log2(10) <= rec["no_model_bits"] <= 1257 * math.log2(10) + 2 * WORD
        assert rec["beats_no_model"] == (rec["total_bits"] < rec["no_model_bits"])
        # a minimum on the grid's coarse edge sends the search further: 12.8 is tried when 6.4 was best
        if max(curve) > 6.4:
            assert 12.8 in curve
        assert rec["edge"] in (None, "coarse", "fine") and (rec["edge"] is None) == (min(curve) < rec["rel"] < max(curve))
        # the weights' quantised code: a few bits a parameter at most, far below float32
        n = sum(p.numel() for p in models.build("mlp", (1, 8, 8), 10).parameters())
        assert 0 < rec["model_bits"] < 12 * n
    assert main(["compare", str(runs["baseline"]), str(runs["momos"])]) == 0
    out = capsys.readouterr().out
    assert "two_part:total_bits" in out and "two_part:no_model_bits" in out
    # a winner is named only where a total beats sending the labels with no model
    assert ("shortest two-part total:" in out) != ("no two-part total beats the labels sent with no model" in out)
    assert main(["two-part", str(runs["baseline"]), str(runs["momos"]), "--rel", "0.5", "-f", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec[str(runs["momos"])]["rel"] == 0.5 and not rec[str(runs["momos"])]["optimum"]
    assert json.loads((runs["momos"] / "two_part.json").read_text())["rel"] == 0.5


def test_two_part_model_part_is_one_stream_that_decodes(tmp_path):
    """Part one decodes as one stream into the very weights part two was coded with."""
    from momos import two_part
    from momos.runs import load_run_model

    run = tmp_path / "run"
    train(TrainConfig(method="baseline", epochs=3, estimators=["zstd"]), run, quiet=True)
    model, ds = load_run_model(run)
    stream, mse = two_part.encode_model(model, 0.2, "mlp")
    fresh = models.build("mlp", (1, 8, 8), 10)
    assert two_part.decode_model(stream, fresh) == "mlp"
    for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
        code = kc.encode_quantized(a.detach(), rel=0.2)
        assert torch.equal(b.detach(), torch.as_tensor(np.asarray(kc.decode_quantized(code))).reshape(b.shape)), name
    fixed = two_part.measure(model, ds.train, ds.test, rel=0.2, architecture="mlp")
    assert fixed.model_bits == 8 * len(stream) and fixed.mse == pytest.approx(mse)
    with pytest.raises(kc.errors.CorruptFileError):
        two_part.decode_model(stream[:-3], models.build("mlp", (1, 8, 8), 10))


def test_the_best_preset_codes_small_data_and_decodes_from_its_bytes(capsys):
    from momos.prequential import header, presets
    from momos.prequential.presets import PRESETS

    r = prequential(data="digits", limit=160, preset="best", quiet=True)  # its MNIST run is in the README
    best = PRESETS["best"]
    assert r.models == list(best.models) and r.options["ensemble"] == best.options.ensemble
    assert r.options["preset"] == "best" and r.options["preset_tried"] == best.tried
    assert [c.end for c in r.chunks] == [*best.chunks(160), 160]
    assert r.total_bits == r.header_bits + r.stream_bits and r.ideal_bits - WORD <= r.stream_bits
    # the header names the preset instead of its model, schedule and options: version, "digits", 0, index,
    # seed, limit + 1 (two bytes), then the label count (two bytes) and their CRC-32
    assert r.header_bits == 8 * 19 and header.decode(r.code)[0]["preset"] == presets.index("best")
    assert np.array_equal(decode(bytes(r.code)), _seeded_labels("digits", 0, 160))
    with pytest.raises(PrequentialError, match="no preset 9"):
        decode(header.encode_preset("digits", 9, 0, 160, _seeded_labels("digits", 0, 160))
               + r.code[r.header_bits // 8:])
    with pytest.raises(PrequentialError, match="preset"):
        prequential("cnn", data="digits", limit=400, preset="best", quiet=True)
    with pytest.raises(PrequentialError, match="unknown preset"):
        prequential(data="digits", limit=400, preset="fastest", quiet=True)
    assert main(["prequential", "--data", "digits", "--preset", "best", "--ensemble", "2"]) != 0
    assert "--preset best sets" in capsys.readouterr().err


# ------------------------------------------------------------------ the decoder trusts nothing in its header (#28)
def test_a_decoder_refuses_a_header_no_encoder_writes_before_training():
    from kcomplexity.codecs.bits import varint
    from momos.prequential import header

    labels = _seeded_labels("digits", 0, 100)
    with pytest.raises(PrequentialError, match="seed"):
        decode(header.encode("digits", ["mlp"], 2 ** 64 - 1, 100, [64], TrainOptions(), labels) + b"\0" * 8)
    with pytest.raises(PrequentialError, match="ensemble"):
        TrainOptions(ensemble=10 ** 6)
    for name, value in (("max_epochs", 10 ** 9), ("batch_size", 10 ** 9), ("lr", float("inf"))):
        with pytest.raises(PrequentialError, match=name):
            TrainOptions(**{name: value})
    # a header naming 16 networks per model (the largest ensemble) with that varint grown to a million
    ok = header.encode("digits", ["mlp"], 0, 100, [64], TrainOptions(ensemble=16), labels)
    at = len(ok) - 4 - len(varint(100)) - 1
    assert ok[at] == 16
    with pytest.raises(PrequentialError, match="ensemble|damaged"):
        decode(ok[:at] + varint(10 ** 6) + ok[at + 1:] + b"\0" * 8)
    # the limit flipped to "all": the header's label count disagrees, and nothing is trained
    r = prequential("mlp", "digits", limit=100, chunks=[64], max_epochs=2, quiet=True)
    side, _ = header.decode(r.code)
    assert side["n"] == 100 and side["crc"] == header.labels_crc(labels)
    flipped = r.code.replace(b"mlp" + bytes([0, 101]), b"mlp" + bytes([0, 0]), 1)  # seed 0, then limit + 1: 0
    assert flipped != r.code
    with pytest.raises(PrequentialError, match="holds 100 labels"):
        decode(flipped)


def test_flipped_bits_in_the_stream_never_decode_to_wrong_labels():
    r = prequential("mlp", "digits", limit=100, chunks=[64], max_epochs=2, quiet=True)
    labels = _seeded_labels("digits", 0, 100)
    head = r.header_bits // 8
    rng = np.random.default_rng(0)
    outcomes = []
    for i in rng.choice(np.arange(head, len(r.code)), size=8, replace=False):
        damaged = bytearray(r.code)
        damaged[i] ^= 1 << int(rng.integers(8))
        try:
            got = decode(bytes(damaged))
        except (PrequentialError, CorruptFileError):
            outcomes.append("refused")
            continue
        assert np.array_equal(got, labels)  # a flip that decodes must decode to the labels themselves
        outcomes.append("same")
    assert "refused" in outcomes
