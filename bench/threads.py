"""Torch threads: decode and training step speed at 1 vs 2 (or `--threads`) threads, same run.

    nice -n 19 python bench/threads.py [--threads 1 2] [--rounds 5] [--new-tokens 16]

Justifies `lmlab.devices.default_threads()` (physical cores, fewer when the machine is loaded).
Workloads, each timed in rounds that alternate the thread counts so drift in machine load hits
every count alike (medians reported):
- decode: a SmolLM2-135M-shaped model (random weights; speed does not depend on them), greedy,
  batch 1 and batch 8 (a GRPO rollout batch), ms per decode step = (t(N) - t(1)) / (N - 1);
- train: one step (forward, cross-entropy, backward, AdamW) of a tiny 2-layer d=128 model,
  batch 16 x 64 tokens, and of a 6-layer d=384 model.
The 1-minute load average before and after is printed: on a shared machine the numbers are
indicative, and the point of the comparison is how they change with load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from lmlab.devices import default_threads
from lmlab.families import preset
from lmlab.generate import generate
from lmlab.model import Transformer


def decode_ms(model: Transformer, batch: int, n: int) -> float:
    """ms per decode step at `batch` rows: (t(n) - t(1)) / (n - 1), prompts of 16 tokens."""
    prompts = torch.randint(0, 1000, (batch, 16), generator=torch.Generator().manual_seed(0))

    def run(k: int) -> float:
        t0 = time.perf_counter()
        generate(model, prompts, max_new_tokens=k, stop_ids=[])
        return time.perf_counter() - t0

    return (run(n) - run(1)) / (n - 1) * 1e3


def train_ms(model: Transformer, opt: torch.optim.Optimizer, batch: int, seq: int) -> float:
    """ms per training step (forward, cross-entropy, backward, AdamW, zero_grad)."""
    x = torch.randint(0, model.cfg.vocab_size, (batch, seq + 1))
    t0 = time.perf_counter()
    logits = model(x[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) * 1e3


def tiny(d: int, layers: int) -> Transformer:
    torch.manual_seed(0)
    cfg = preset("gpt2-tiny", d_model=d, n_layers=layers, n_heads=4, n_kv_heads=4,
                 head_dim=d // 4, d_ff=4 * d, vocab_size=512, max_seq_len=128)  # fmt: skip
    return Transformer(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start; "
          f"default_threads() = {default_threads()}")  # fmt: skip
    torch.manual_seed(0)
    smol = Transformer(preset("smollm2-135m")).eval()
    small, mid = tiny(128, 2), tiny(384, 6)
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (small, mid)}
    work = {
        "decode SmolLM2-135M b=1 (ms/token)": lambda: decode_ms(smol, 1, args.new_tokens),
        "decode SmolLM2-135M b=8 (ms/step)": lambda: decode_ms(smol, 8, args.new_tokens),
        "train 2L d128 b16x64 (ms/step)": lambda: train_ms(small, opts[small], 16, 64),
        "train 6L d384 b16x64 (ms/step)": lambda: train_ms(mid, opts[mid], 16, 64),
    }
    times = {(w, t): [] for w in work for t in args.threads}
    for r in range(args.rounds + 1):
        for w, fn in work.items():
            for t in args.threads if r % 2 else reversed(args.threads):
                torch.set_num_threads(t)
                ms = fn()
                if r:  # round 0 warms up every path
                    times[w, t].append(ms)
    print(f"load {os.getloadavg()[0]:.2f} at end; medians of {args.rounds} rounds")
    head = "".join(f"{f'{t} thr':>10}" for t in args.threads)
    print(f"{'workload':<38}{head}  speed-up {args.threads[0]}->{args.threads[-1]}")
    for w in work:
        med = [statistics.median(times[w, t]) for t in args.threads]
        cells = "".join(f"{m:10.1f}" for m in med)
        print(f"{w:<38}{cells}  {med[0] / med[-1]:.2f}x")


if __name__ == "__main__":
    main()
