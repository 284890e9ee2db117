"""Frozen codes: today's decoders read the committed bytes and today's encoders reproduce them.

A change to any byte format fails here; bump that codec's version, keep a decoder for the old one and add a
fixture for the new (tests/fixtures/make_codec_fixtures.py writes them).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kcomplexity import codecs
from kcomplexity.pack import codec_for
from kcomplexity.codecs.container import codec_of
from kcomplexity.codecs.labels import LabelDecoder, encode_labels
from kcomplexity.errors import CorruptFileError

HERE = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(HERE))
from make_codec_fixtures import SPECS  # noqa: E402

FIXTURES = HERE / "codecs"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_frozen_code_decodes_and_is_reproduced(name):
    x = np.load(FIXTURES / "weights.npy")
    frozen = (FIXTURES / f"{name}-v1.bin").read_bytes()
    codec = codec_for(SPECS[name])
    assert codec_of(frozen) == codec.name
    back = codecs.decode(frozen)
    assert back.dtype == "float32" and back.shape == x.shape
    if codec.lossless:
        assert back.data.tobytes() == x.tobytes()
    else:
        assert np.abs(back.data - x).max() > 0  # it is a lossy code: something was dropped
    assert codec.encode(x) == frozen, f"the {name} encoder no longer writes its v1 bytes: bump its version"
    assert codec.bits(x) == 8 * len(frozen)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_frozen_code_damaged_is_a_corrupt_file(name):
    frozen = (FIXTURES / f"{name}-v1.bin").read_bytes()
    for damaged in (frozen[:len(frozen) // 2], frozen[:4], b"XX" + frozen[2:], frozen[:3] + b"\x09" + frozen[4:]):
        with pytest.raises(CorruptFileError):
            codecs.decode(damaged)


def test_frozen_label_code():
    data = np.load(FIXTURES / "labels.npz")
    probs, y = data["probs"], data["labels"]
    frozen = (FIXTURES / "labels-v1.bin").read_bytes()
    decoder = LabelDecoder(frozen)
    assert (decoder.decode(probs[:20]) == y[:20]).all() and (decoder.decode(probs[20:]) == y[20:]).all()
    decoder.finish()
    assert encode_labels([(probs[:20], y[:20]), (probs[20:], y[20:])]) == frozen
