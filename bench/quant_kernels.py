"""lmlab's AVX2 int4 / int8 weight kernels vs torch's packed CPU kernels, same run, SmolLM2 shapes.

    python bench/quant_kernels.py [--threads 1] [--rows 1 4 16 32]

For each product (the model's attention / MLP shapes and its 49152-row head): microseconds per
call for lmlab's kernel (`torch.ops.lmlab_native`), torch's (`_weight_int4pack_mm_for_cpu`,
`_weight_int8pack_mm`, bfloat16 inputs) and a float32 matmul, the ratio torch / lmlab, and the
largest error of each against the float32 product with the dequantized weight (relative to the
largest output). The weights stay in cache between calls: decoding, which streams them from
memory, is measured by bench/generate_speed.py. Emulate an AVX2-only CPU for torch's kernels with
`ATEN_CPU_CAPABILITY=avx2`.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from lmlab import kernels, native
from lmlab.quantized import Int4Linear, Int8Linear, kernel_layout

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]  # (out, in)


def per_call_us(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native.load()
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"{kernels.cpu_model()}, torch {torch.__version__} ({cap} kernels), {args.threads} thr")
    print(f"{'product':22s} {'rows':>4s} {'lmlab us':>9s} {'torch us':>9s} {'fp32 us':>8s} "
          f"{'torch/lmlab':>11s} {'err lmlab':>9s} {'err torch':>9s}")  # fmt: skip
    torch.manual_seed(0)
    for n, k in SHAPES:
        lin = torch.nn.Linear(k, n, bias=False)
        l4, l8 = Int4Linear(lin, 32), Int8Linear(lin)
        q4, packed = l4.nibbles(), kernel_layout(l4.codes())
        sz = l4.scales_and_zeros.contiguous()  # [groups, out, 2]: torch's layout
        sz_rows = sz.transpose(0, 1).contiguous()  # [out, groups, 2]: lmlab's
        w4, w8 = l4.dequantize(), l8.dequantize()
        reps = 20 if n > 10000 else 200
        for m in args.rows:
            x = torch.randn(m, k)
            xb = x.bfloat16()
            ops, aten = torch.ops.lmlab_native, torch.ops.aten
            runs = {
                f"int4 {n}x{k}": (
                    partial(ops.int4_linear, x, q4, sz_rows, 32),
                    partial(aten._weight_int4pack_mm_for_cpu, xb, packed, 32, sz),
                    w4,
                ),
                f"int8 {n}x{k}": (
                    partial(ops.int8_linear, x, l8.qweight, l8.scale),
                    partial(aten._weight_int8pack_mm, xb, l8.qweight, l8.scale),
                    w8,
                ),
            }
            for name, (ours, theirs, w) in runs.items():
                want = x @ w.T
                t_ours, t_theirs = per_call_us(ours, reps), per_call_us(theirs, reps)
                t_fp32 = per_call_us(partial(torch.matmul, x, w.T), reps)
                print(f"{name:22s} {m:4d} {t_ours:9.1f} {t_theirs:9.1f} {t_fp32:8.1f} "
                      f"{t_theirs / t_ours:10.2f}x {error(ours(), want):9.1e} "
                      f"{error(theirs(), want):9.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
