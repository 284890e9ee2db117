"""Reliability, second round (issue #21): hangs and tracebacks fixed by one rule each."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kcomplexity.codecs import fpc as float_code
from kcomplexity.codecs.bits import read_varint, varint
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


# ------------------------------------------------------------------ 10. options that scale memory are bounded
def test_memory_scaling_options_name_their_bound(tmp_path):
    import os

    import kcomplexity as kc
    from kcomplexity.errors import EstimatorSettingError
    from momos.errors import MoMosError, PrequentialError
    from momos.prequential import prequential

    w = np.ones((4, 4), dtype=np.float32)
    with pytest.raises(EstimatorSettingError, match=f"1..{os.cpu_count()}"):
        kc.score(w, "lzma", jobs=(os.cpu_count() or 1) + 1)
    with pytest.raises(MoMosError, match="width must be in 1..16384"):
        train(TrainConfig(width=100_000_000, epochs=1), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(PrequentialError, match="0..16"):
        prequential("mlp", "digits", augment=100_000, quiet=True)


# ------------------------------------------------------------------ 12. over-long paths are one line
def test_over_long_paths_are_one_line(capsys):
    from kcomplexity.cli import main as kc_main
    from momos.cli import main as momos_main

    long = "/tmp/" + "x" * 300
    for main, argv in ((kc_main, ["score", long + "/model.safetensors"]),
                       (momos_main, ["train", "--out", long, "--epochs", "1"]),
                       (momos_main, ["compare", long]), (momos_main, ["two-part", long])):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ 16. flattened names never collide silently
def test_nested_and_dotted_names_that_collide_are_an_error():
    import kcomplexity as kc
    from kcomplexity.errors import UnsupportedSourceError

    with pytest.raises(UnsupportedSourceError, match="'a.b'"):
        kc.score({"a": {"b": np.ones(3)}, "a.b": np.zeros(3)}, "lzma")


# ------------------------------------------------------------------ 17. reading runs and sweeps needs no torch
def test_compare_of_runs_and_sweeps_imports_no_torch(tmp_path):
    run = tmp_path / "sw" / "seed=0"
    train(TrainConfig(epochs=1, width=16, estimators=["lzma"]), tmp_path / "run", quiet=True)
    from momos.sweep import Spec, sweep

    sweep(Spec.from_mapping({"base": {"epochs": 1, "width": 16, "estimators": "lzma"}, "grid": {"seed": [0, 1]}}),
          tmp_path / "sw", quiet=True)
    assert (run / "result.json").is_file()
    code = ("import sys; from momos.cli import main; "
            f"assert main(['compare', {str(tmp_path / 'run')!r}, '-f', 'json']) == 0; "
            f"assert main(['compare', {str(tmp_path / 'sw')!r}, '-f', 'json']) == 0; "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"


# ------------------------------------------------------------------ 15. idx headers are checked against the file
def _idx(dims: list[int], payload: bytes | None = None, ndim: int | None = None) -> bytes:
    import struct

    body = payload if payload is not None else bytes(int(np.prod(dims)))
    return b"\x00\x00\x08" + bytes([len(dims) if ndim is None else ndim]) + b"".join(struct.pack(">I", d)
                                                                                   for d in dims) + body


def _mnist_dir(root, **override):
    import gzip

    files = {"train-images-idx3-ubyte": _idx([20, 28, 28]), "train-labels-idx1-ubyte": _idx([20]),
             "t10k-images-idx3-ubyte": _idx([10, 28, 28]), "t10k-labels-idx1-ubyte": _idx([10])}
    files.update(override)
    root.mkdir()
    for name, data in files.items():
        if name.endswith(".gz"):
            (root / name).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("override, message", [
    ({"train-labels-idx1-ubyte": _idx([19])}, "20 images but .* 19 labels"),
    ({"train-images-idx3-ubyte": _idx([20, 28, 28])[:12]}, "truncated"),
    ({"train-images-idx3-ubyte": _idx([0, 28, 28])}, "no items"),
    ({"train-images-idx3-ubyte": _idx([20 * 28 * 28])}, "1 dimension"),
    ({"train-images-idx3-ubyte": b"\x00\x00\x08\xff" + bytes(64)}, "255 dimension"),
    ({"train-images-idx3-ubyte": _idx([20, 28, 28], bytes(20 * 28 * 28 + 5))}, "longer than its header"),
    ({"t10k-labels-idx1-ubyte": _idx([10], bytes([12] * 10))}, "label 12"),
    ({"train-images-idx3-ubyte": _idx([20, 28, 27])}, "test images"),
])
def test_malformed_idx_files_are_one_error(tmp_path, override, message):
    from momos.data import load
    from momos.errors import DataError

    root = _mnist_dir(tmp_path / "d", **override)
    with pytest.raises(DataError, match=message):
        load("mnist", seed=0, val_fraction=0.1, data_dir=str(root))


def test_a_gzip_idx_bomb_is_refused_before_it_is_inflated(tmp_path):
    import resource

    from momos.data import load
    from momos.errors import DataError

    import zlib

    del_name = "train-images-idx3-ubyte"
    root = _mnist_dir(tmp_path / "d", **{del_name: b""})
    (root / del_name).unlink()
    # a ~1 MB gzip file whose header claims 47 MB and whose stream inflates to 1 GiB of zeros
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [z.compress(_idx([60000, 28, 28])[:16])] + [z.compress(chunk) for _ in range(1024)] + [z.flush()]
    (root / (del_name + ".gz")).write_bytes(b"".join(parts))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="longer than its header"):
        load("mnist", seed=0, val_fraction=0.1, data_dir=str(root))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300 * 1024  # KiB; inflating all: 1 GiB
    good = _mnist_dir(tmp_path / "ok", **{"train-images-idx3-ubyte.gz": _idx([20, 28, 28])})
    (good / "train-images-idx3-ubyte").unlink()
    ds = load("mnist", seed=0, val_fraction=0.1, data_dir=str(good))
    assert len(ds.test) == 10


# ------------------------------------------------------------------ 14. CLI inputs are one line
@pytest.mark.parametrize("argv", [["demo", "--seed", "-1"], ["demo", "--seed", "99999999999999999999"]])
def test_bad_seeds_are_usage_errors(argv, capsys):
    from kcomplexity.cli import main as kc_main

    with pytest.raises(SystemExit) as stop:
        kc_main(argv)
    assert stop.value.code == 2 and "0..4294967295" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [(["--seed", "-1"], "0..4294967295"), (["--device", "meta"], "meta"),
                                            (["--device", "bogus"], "unknown device"),
                                            (["--device", "cuda"], "not available")])
def test_prequential_rejects_bad_seeds_and_devices(extra, message, capsys):
    from momos.cli import main as momos_main

    try:
        rc = momos_main(["prequential", "--limit", "200", "--quiet", *extra])
    except SystemExit as stop:
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("settings, message", [("s=2:k=5", "unknown MoMos rd setting"),
                                               ("s=2:memory_mb=1", "unknown MoMos rd setting"),
                                               ("s=2:seed=999999999999999999999", "0..4294967295"),
                                               ("bogus", "key=value")])
def test_rd_momos_settings_are_checked(tmp_path, settings, message, capsys):
    from safetensors.numpy import save_file

    from kcomplexity.cli import main as kc_main

    save_file({"w": np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)},
              str(tmp_path / "w.safetensors"))
    assert kc_main(["rd", str(tmp_path / "w.safetensors"), "--momos", settings]) == 2
    assert message in capsys.readouterr().err


def test_a_tensor_with_200_dimensions_and_a_logger_path_that_is_a_folder(tmp_path, capsys):
    import json
    import struct

    from kcomplexity.callbacks import ComplexityLogger
    from kcomplexity.cli import main as kc_main
    from kcomplexity.errors import KComplexityError

    header = json.dumps({"w": {"dtype": "F32", "shape": [1] * 200, "data_offsets": [0, 4]}}).encode()
    (tmp_path / "d.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    assert kc_main(["score", str(tmp_path / "d.safetensors"), "-q"]) == 2
    assert "200 dimensions" in capsys.readouterr().err
    with pytest.raises(KComplexityError, match="is a directory"):
        ComplexityLogger(path=tmp_path)


# ------------------------------------------------------------------ 16. estimators and totals
def test_mdl_scores_a_checkpoint_with_counters_and_one_element_tensors(tmp_path):
    import kcomplexity as kc
    from safetensors.numpy import save_file

    path = tmp_path / "best.safetensors"
    save_file({"w": np.random.default_rng(0).standard_normal(100).astype(np.float32),
               "bn.num_batches_tracked": np.array(5, dtype=np.int64), "scale": np.ones(1, np.float32)}, str(path))
    for est in ("mdl", "mdl-paper"):
        report = kc.score(path, est, progress=False)
        assert report.excluded(est) == ["bn.num_batches_tracked"] and report.total[est] > 0
    report = kc.score(path, "fpc,lzma", progress=False)
    assert report.coded_numel("fpc") == 101 and report.coded_numel("lzma") == 102  # fpc cannot code the int64
    summary = report.summary()
    assert summary.loc["fpc", "bits_per_param"] == pytest.approx(report.total["fpc"] / 101)
    assert "fpc cannot code 1 tensor(s)" in report.to_table()


def test_a_diverging_run_logs_missing_estimates_and_finishes(tmp_path):
    result = train(TrainConfig(lr=1e6, epochs=2, width=16, estimators=["delta", "lzma"]), tmp_path / "run",
                   quiet=True)
    assert result.final["complexity"]["lzma"] is None and (tmp_path / "run" / "result.json").is_file()


# ------------------------------------------------------------------ 13. codes: damaged input is our error
def test_quantised_codes_with_impossible_symbols_or_wrong_types_are_corrupt():
    from kcomplexity.codecs.bits import zigzag
    from kcomplexity.codecs.quant import decode_quantized, encode_quantized

    good = encode_quantized(np.full(10, 1.0, dtype=np.float32), rel=0.1)
    head = good[:5 + 2 + 1 + 8]  # container (magic, codec, version, dtype), ndim, dim, method, step
    for lo, span in ((2 ** 63 - 1, 5), (-(2 ** 63) - 1, 0), (0, 2 ** 63)):
        with pytest.raises(CorruptFileError):
            decode_quantized(head + varint(zigzag(lo)) + varint(span))
    for bad in ("KQ", None, 3):
        with pytest.raises(CorruptFileError, match="is bytes"):
            decode_quantized(bad)


def test_label_codes_that_are_truncated_empty_or_end_in_a_zero_word_are_detected():
    from kcomplexity.codecs.labels import LabelDecoder, encode_labels

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=300)
    y = np.array([rng.choice(10, p=row) for row in p])
    code = encode_labels([(p[:100], y[:100]), (p[100:], y[100:])])
    d = LabelDecoder(code)
    assert (d.decode(p[:100]) == y[:100]).all() and (d.decode(p[100:]) == y[100:]).all()
    d.finish()
    for damaged in (code[:-4], code[4:], b""):
        with pytest.raises(CorruptFileError):
            d = LabelDecoder(damaged)
            d.decode(p[:100])
            d.decode(p[100:])
            d.finish()
    with pytest.raises(CorruptFileError, match="zero word"):
        LabelDecoder(code[:-4] + bytes(4))


# ------------------------------------------------------------------ 8. a second Ctrl-C ends a pool promptly
def test_two_interrupts_end_score_with_worker_processes_promptly(tmp_path):
    import os
    import signal

    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({f"t{i}": rng.standard_normal(2_000_000).astype(np.float32) for i in range(20)},
              str(tmp_path / "w.safetensors"))  # ~1 minute of fpc+mdl work: workers are busy when interrupted
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from kcomplexity.cli import main; "
            f"sys.exit(main(['score', {str(tmp_path / 'w.safetensors')!r}, '-e', 'fpc,mdl', '-j', '2']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    # wait until scoring is under way (the progress bar has started), then interrupt twice
    deadline = time.time() + 120
    seen = b""
    while time.time() < deadline and b"%" not in seen:
        seen += proc.stderr.read1(4096)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    t = time.perf_counter()
    try:
        rc = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert rc != 0 and time.perf_counter() - t < 30


def test_an_abandoned_pool_kills_its_worker_processes():
    """The pool's processes die when its body raises: a busy worker left behind outlived the program, orphaned."""
    from kcomplexity import workers

    with pytest.raises(KeyboardInterrupt):
        with workers.pool(2) as executor:
            processes = list(executor._processes.values())
            busy = [executor.submit(time.sleep, 120) for _ in range(2)]
            while not all(f.running() for f in busy):
                time.sleep(0.05)
            raise KeyboardInterrupt
    assert len(processes) == 2
    for process in processes:
        process.join(timeout=60)  # killed at once; a surviving worker would still be asleep here
        assert not process.is_alive()
        # the forkserver reports -SIGKILL; when the executor's own thread reads that report first, this
        # Process object reads the closed pipe and says 255 (multiprocessing's poll race), so the pid decides
        assert process.exitcode in (-signal.SIGKILL, 255)
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)


# ------------------------------------------------------------------ 10/16. .npz members of any name, negative shapes
def test_npz_bomb_in_a_member_of_any_name_and_negative_npy_shapes(tmp_path):
    import zipfile

    import kcomplexity as kc

    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("weights", "w", force_zip64=True) as fh:  # no .npy suffix: the old guard skipped it
            chunk = bytes(1 << 20)
            for _ in range(300):
                fh.write(chunk)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CorruptFileError, match="zip bomb"):
        kc.score(bomb, "lzma", progress=False)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 4), }"
    header += b" " * (118 - len(header)) + b"\n"
    (tmp_path / "neg.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(48))
    with pytest.raises(CorruptFileError, match="negative dimension"):
        kc.score(tmp_path / "neg.npy", "lzma", progress=False)


def test_fpc_keeps_0_d_shapes_and_decodes_every_shape_it_encodes():
    from kcomplexity.codecs import fpc as float_code

    scalar = np.float32(3.5).reshape(())
    out = float_code.decode(float_code.encode(scalar))
    assert out.shape == () and out == scalar
    deep = np.arange(2, dtype=np.float32).reshape([2] + [1] * 39)  # 40 dimensions: encoded, so decoded
    assert (float_code.decode(float_code.encode(deep)) == deep).all()


# ------------------------------------------------------------------ 10. a 21-byte constant code decodes within 1 GiB
def test_a_tiny_constant_code_of_the_largest_allowed_size_decodes_within_its_output():
    code = (
        "import resource; import numpy as np\n"
        "from kcomplexity.codecs.bits import read_varint, varint\n"
        "from kcomplexity.codecs.quant import encode_quantized, decode_quantized\n"
        "c = encode_quantized(np.full(1000, 2.0, np.float32), rel=0.1)\n"
        "_, p = read_varint(c, 5); _, p = read_varint(c, p)\n"
        "big = c[:5] + varint(1) + varint(2 ** 28) + c[p:]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = decode_quantized(big)\n"
        "print(len(big), out.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2 ** 20)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    size, n, growth_gib = res.stdout.split()
    assert int(size) <= 22 and int(n) == 2 ** 28
    assert float(growth_gib) < 1.2  # the float32 output is 1 GiB; it was 5-6 GiB of int64/float64 temporaries


def test_a_large_tensor_beside_nested_weights_is_named_not_judged():
    import kcomplexity as kc

    report = kc.score({"model": {"w": np.ones(4, np.float32)}, "big.weight": np.ones((300, 300), np.float32)},
                      "lzma", progress=False)
    table = report.to_table()
    assert "not weights" not in table and "big.weight" in table


def test_many_members_each_under_the_bound_are_one_bomb(tmp_path):
    import zipfile

    import kcomplexity as kc

    bomb = tmp_path / "many.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_BZIP2) as archive:
        for i in range(3):  # each 120 MiB (under the per-member 256 MiB), 360 MiB in all
            with archive.open(f"m{i}.npy", "w", force_zip64=True) as fh:
                for _ in range(120):
                    fh.write(bytes(1 << 20))
    with pytest.raises(CorruptFileError, match="members would expand"):
        kc.score(bomb, "lzma", whole=True, progress=False)
