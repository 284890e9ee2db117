"""Fuzzing the second round's surfaces: run directories, idx files, Hugging Face caches and every decoder.

Each input gives a correct result or one of our errors; decoding stays linear (a damaged input of a size
decodes or fails within a bounded multiple of a valid input of that size); bounded examples, no deadline.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kcomplexity.errors import KComplexityError
from test_fuzz import mutated

FEW = settings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MANY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def damaged(seed: bytes) -> st.SearchStrategy[bytes]:
    """test_fuzz's mutations plus long varint runs in the header."""
    return mutated(seed, header_varints=True)


# ------------------------------------------------------------------ decoders: our error or a result, in linear time
def _codes() -> dict[str, tuple[bytes, object]]:
    from kcomplexity.codecs import fpc as float_code
    from kcomplexity.estimators import mdl
    from kcomplexity.codecs.labels import LabelDecoder, encode_labels
    from kcomplexity.codecs.quant import decode_quantized, encode_quantized

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    probs = rng.dirichlet(np.ones(5), size=200)
    labels = np.array([rng.choice(5, p=p) for p in probs])

    def labels_decode(data: bytes) -> None:
        d = LabelDecoder(data)
        d.decode(probs)
        d.finish()

    return {"fpc": (float_code.encode(w), float_code.decode),
            "quant": (encode_quantized(w, rel=0.1), decode_quantized),
            "mdl": (mdl.mdl(w, 2).encode(), mdl.decode),
            "labels": (encode_labels([(probs, labels)]), labels_decode)}


CODES = _codes()


@pytest.mark.parametrize("name", list(CODES))
def test_damaged_codes_decode_or_fail_cleanly_in_linear_time(name):
    seed, decode = CODES[name]

    def timed(data: bytes) -> float:
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decode(data)
        except KComplexityError:
            pass
        return time.perf_counter() - t

    valid = max(timed(seed), 1e-3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @FEW
    @given(damaged(seed))
    def check(data: bytes) -> None:
        # a damaged code costs at most a bounded multiple of a valid one plus what its extra bytes take to skim
        assert timed(data) < 200 * valid + 1e-5 * len(data) + 0.5

    check()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: no decoder blew up


# ------------------------------------------------------------------ run directories
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from momos.config import TrainConfig
    from momos.trainer import train

    run = tmp_path_factory.mktemp("seed") / "run"
    train(TrainConfig(epochs=2, width=16, estimators=["lzma"]), run, quiet=True)
    (run / "result.json").unlink()  # resumable, so --resume reads every file
    return run


RUN_FILES = ["config.json", "checkpoints/latest.json", "log.jsonl", "checkpoints/epoch-00002/state.pt"]


@pytest.mark.parametrize("target", RUN_FILES)
def test_damaged_run_files_resume_compare_or_fail_with_our_error(finished_run, tmp_path, target):
    from momos.cli import main
    from momos.trainer import train

    seed = (finished_run / target).read_bytes()
    counter = iter(range(10 ** 6))

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(damaged(seed))
    def check(data: bytes) -> None:
        run = tmp_path / f"r{next(counter)}"
        shutil.copytree(finished_run, run)
        (run / target).write_bytes(data)
        (run / "notes.txt").write_text("mine")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                train({}, run, resume=True, quiet=True)
            except KComplexityError:
                pass
            assert main(["compare", str(run), "-f", "json"]) in (0, 2)
        assert (run / "notes.txt").read_text() == "mine"
        shutil.rmtree(run)

    check()


# ------------------------------------------------------------------ idx files
def _idx(dims: list[int]) -> bytes:
    return b"\x00\x00\x08" + bytes([len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + bytes(
        int(np.prod(dims)))


IDX = {"train-images-idx3-ubyte": _idx([12, 28, 28]), "train-labels-idx1-ubyte": _idx([12]),
       "t10k-images-idx3-ubyte": _idx([6, 28, 28]), "t10k-labels-idx1-ubyte": _idx([6])}


@pytest.mark.parametrize("target", list(IDX))
def test_damaged_idx_files_load_or_fail_with_our_error(tmp_path, target):
    from momos.data import load

    counter = iter(range(10 ** 6))

    @FEW
    @given(damaged(IDX[target]))
    def check(data: bytes) -> None:
        root = tmp_path / f"d{next(counter)}"
        root.mkdir()
        for name, seed in IDX.items():
            (root / name).write_bytes(data if name == target else seed)
        try:
            ds = load("mnist", seed=0, val_fraction=0.1, data_dir=str(root))
            assert len(ds.test) == 6
        except KComplexityError:
            pass

    check()


# ------------------------------------------------------------------ Hugging Face cache layouts
@MANY
@given(ref=st.one_of(st.text(max_size=40), st.sampled_from(["../../../x", "/etc", "main", "..", "a" * 300])),
       kind=st.sampled_from(["file", "fifo", "dir", "link"]))
def test_hf_cache_refs_resolve_inside_the_cache_or_fail_cleanly(tmp_path_factory, ref, kind):
    pytest.importorskip("huggingface_hub")
    from safetensors.numpy import save_file

    from kcomplexity.sources import open_source

    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--org--x"
    (repo / "refs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc"
    snap.mkdir(parents=True)
    save_file({"w": np.ones(4, dtype=np.float32)}, str(snap / "model.safetensors"))
    main_ref = repo / "refs" / "main"
    if kind == "file":
        main_ref.write_bytes(ref.encode("utf-8", "surrogatepass"))
    elif kind == "fifo":
        os.mkfifo(main_ref)
    elif kind == "dir":
        main_ref.mkdir()
    else:
        main_ref.symlink_to(cache / "nowhere")
    old = os.environ.get("HF_HUB_CACHE")
    os.environ["HF_HUB_CACHE"] = str(cache)
    try:
        src = open_source("org/x")
        names = src.names
        assert names == ["w"]
    except (KComplexityError, FileNotFoundError):
        pass
    finally:
        if old is None:
            del os.environ["HF_HUB_CACHE"]
        else:
            os.environ["HF_HUB_CACHE"] = old


# ------------------------------------------------------------------ shard indexes
@MANY
@given(index=st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=8)),
                          lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c,
                                                                                      max_size=4)), max_leaves=12))
def test_shard_indexes_of_any_shape_are_read_or_refused(tmp_path_factory, index):
    from kcomplexity.sources import open_source

    root = tmp_path_factory.mktemp("shards")
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    try:
        list(open_source(root / "model.safetensors.index.json"))
    except KComplexityError:
        pass
