"""Window + sink attention at long sequence lengths: our blocked kernel vs dense attention.

    python bench/sparse_attention.py [--lengths 4096,16384] [--window 64] [--heads 4] [--flex]

Same q, k, v for every method, in one process; methods alternate within each repeat so drift
in machine load hits all of them. Compared: dense SDPA without a mask (the dense floor, a
fused flash kernel), dense SDPA with the sparse pattern as a bool mask (masked dense softmax),
ours (`local_sink_attention`) and, with --flex, PyTorch FlexAttention compiled with the same
block mask (compile time reported separately). Prints median seconds and speedups.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lmlab.sparse import SparsePattern, local_sink_attention


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="4096,16384")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--sink-every", type=int, default=64, help="every n-th token is a sink token")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--flex", action="store_true", help="also time compiled FlexAttention")
    a = p.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, window {a.window}, "
        f"heads {a.heads}x{a.head_dim}, sink = position 0 + every {a.sink_every}-th token"
    )
    for T in (int(x) for x in a.lengths.split(",")):
        bench_length(T, a)


def bench_length(T: int, a: argparse.Namespace) -> None:
    """Time every method at sequence length T and print the speedups."""
    q, k, v = torch.randn(3, 1, a.heads, T, a.head_dim).unbind(0)
    tokens = torch.arange(T).view(1, T) % a.sink_every  # token id 0 marks a sink
    pat = SparsePattern(a.window, sink_first=1, sink_ids=(0,))
    sinks = pat.sinks(tokens)
    mask = pat.mask(tokens)
    keep = float(mask.float().mean())
    methods = {
        "dense": lambda: F.scaled_dot_product_attention(q, k, v),
        "dense+mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "ours": lambda: local_sink_attention(q, k, v, window=a.window, sinks=sinks),
    }
    ref = methods["dense+mask"]()
    err = (methods["ours"]() - ref).abs().max().item()
    if a.flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        is_sink = sinks[0]

        def mask_mod(b, h, qi, kj):
            return ((qi - kj).abs() <= a.window) | is_sink[kj]

        t0 = time.perf_counter()
        bm = create_block_mask(mask_mod, None, None, T, T, device="cpu")
        flex = torch.compile(flex_attention)
        flex_err = (flex(q, k, v, block_mask=bm) - ref).abs().max().item()
        compile_s = time.perf_counter() - t0
        methods["flex"] = lambda: flex(q, k, v, block_mask=bm)
    res = {name: [] for name in methods}
    for _ in range(a.repeats):
        for name, fn in methods.items():
            res[name].append(_time(fn, 1))
    med = {n: statistics.median(t) for n, t in res.items()}
    print(f"\nT={T}: pattern keeps {100 * keep:.2f}% of query-key pairs; ours max |diff| {err:.1e}")
    for n, s in med.items():
        print(
            f"  {n:11s} {s:8.3f} s   dense/this {med['dense'] / s:6.2f}x   "
            f"dense+mask/this {med['dense+mask'] / s:6.2f}x"
        )
    if a.flex:
        print(
            f"  flex: first call (block mask + compile) {compile_s:.1f} s, max |diff| {flex_err:.1e}"
        )


if __name__ == "__main__":
    main()
