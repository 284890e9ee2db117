"""Speed of the precision estimators (same process, ratios against a baseline run beside them).

Run by hand: ``python benchmarks/bench_precision.py``.

* ``quant`` throughput on float32 weights, one thread, against lzma-9 on the
  same bytes (the target is at least 20 MB/s);
* ``intrinsic``: its wall time against one loss evaluation, so the cost reads
  as "loss evaluations + the code" (at most max_evals evaluations).
"""
from __future__ import annotations

import torch

import kcomplexity as kc
from _timing import best_of


def quant_speed() -> None:
    torch.manual_seed(0)
    # trained-looking weights: a real MLP's initialisation, 4 MiB of float32
    w = [torch.nn.Linear(1024, 1024).weight.detach().numpy().copy()]
    mb = sum(a.nbytes for a in w) / 1e6
    quant = kc.estimators.get("quant")
    lz = kc.estimators.get("lzma")
    t_q = best_of(lambda: [quant.bits(a) for a in w])
    t_l = best_of(lambda: [lz.bits(a) for a in w], repeat=1)
    bq = sum(quant.bits(a) for a in w) / sum(a.size for a in w)
    bl = sum(lz.bits(a) for a in w) / sum(a.size for a in w)
    print(f"quant (rel=0.1): {mb / t_q:7.1f} MB/s, {bq:.2f} bits/param (lossy: SNR ~31 dB)")
    print(f"lzma-9         : {mb / t_l:7.1f} MB/s, {bl:.2f} bits/param (lossless)")
    print(f"quant speed / lzma-9 speed: {t_l / t_q:.1f}x")


def intrinsic_cost() -> None:
    from bench_intrinsic import digits_mlp

    model, loss_fn = digits_mlp()
    t_loss = best_of(lambda: loss_fn(model), repeat=5)
    t_code = best_of(lambda: kc.estimators.get("quant").bits_whole(list(kc.open_source(model))))
    result = kc.intrinsic(model, loss_fn)
    t_int = best_of(lambda: kc.intrinsic(model, loss_fn))
    print(f"intrinsic: {result.evals} loss evaluations, rel {result.rel:.3g}, {result.bits:,} bits")
    print(f"intrinsic time / one loss evaluation: {t_int / t_loss:.1f}x "
          f"(evaluations + one code: {(result.evals * t_loss + t_code) / t_loss:.1f}x)")


if __name__ == "__main__":
    quant_speed()
    intrinsic_cost()
