"""Int8 weight-only matmul: torch's private fused op vs the public paths, per SmolLM2-135M linear.

    nice -n 19 python bench/int8_kernel.py [--threads 1] [--rows 1 8] [--reps 20]

`lmlab.generate.quantize.Int8Linear` calls `torch.ops.aten._weight_int8pack_mm` (private: no
public torch API multiplies by int8 weights without first materializing a float copy) where the
probe in `lmlab.kernels` passes, else its public fallback `F.linear(x, q.to(bf16)) * scale`. Rows:
- fp32: `F.linear` on float32 weights (no quantization; 4 bytes per weight read);
- bf16: `F.linear` on bfloat16 weights cast once (2 bytes per weight; no int8 memory saving);
- int8 dequant: the public fallback, casting int8 -> bf16 on every call, then the bf16 matmul;
- int8 fused: the private op (1 byte per weight read, scales applied inside).
Median microseconds per call over `--reps` calls after warm-up; the last column sums one token's
worth of SmolLM2-135M linears (30 layers x q, k, v, o, gate, up, down + the 49152-row unembedding).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lmlab import kernels
from lmlab.generate.quantize import quantize_weight

SHAPES = {  # (out, in), count per token for SmolLM2-135M
    "q/o 576x576": ((576, 576), 60),
    "k/v 192x576": ((192, 576), 60),
    "gate/up 1536x576": ((1536, 576), 60),
    "down 576x1536": ((576, 1536), 30),
    "unembed 49152x576": ((49152, 576), 1),
}


def paths(w: torch.Tensor) -> dict:
    """Name -> function of x (float32 [rows, in]) for each way to compute x @ w^T."""
    q, scale = quantize_weight(w)
    s16, w16 = scale.to(torch.bfloat16), w.to(torch.bfloat16)
    out = {
        "fp32": lambda x: F.linear(x, w),
        "bf16": lambda x: F.linear(x.to(torch.bfloat16), w16),
        "int8 dequant": lambda x: F.linear(x.to(torch.bfloat16), q.to(torch.bfloat16)) * s16,
    }
    if kernels.available().int8_weight_only:
        out["int8 fused"] = lambda x: torch.ops.aten._weight_int8pack_mm(
            x.to(torch.bfloat16), q, s16
        )
    return out


def median_us(fn, x: torch.Tensor, reps: int) -> float:
    for _ in range(3):
        fn(x)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), load {os.getloadavg()[0]:.2f}; "
          f"int8 fused kernel: {kernels.reasons()['int8_weight_only'] or 'usable'}")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for rows in args.rows:
        total: dict[str, float] = {}
        print(f"\nrows={rows}: median us per call")
        for label, (shape, count) in SHAPES.items():
            w = torch.randn(*shape, generator=g) * 0.02
            x = torch.randn(rows, shape[1], generator=g)
            cells = []
            for name, fn in paths(w).items():
                us = median_us(fn, x, args.reps)
                total[name] = total.get(name, 0.0) + us * count
                cells.append(f"{name} {us:9.0f}")
            print(f"  {label:<18} " + "  ".join(cells))
        print("  one token, all linears (ms): "
              + "  ".join(f"{k} {v / 1e3:.1f}" for k, v in total.items()))  # fmt: skip


if __name__ == "__main__":
    main()
