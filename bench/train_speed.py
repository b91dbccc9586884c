"""Training throughput: lmlab vs transformers on the same GPT-2-shaped model and batch, same run.

    python bench/train_speed.py [--batch 8] [--seq 128] [--steps 6] [--rounds 3] [--no-compile]
        [--bf16]

A training step is forward, cross-entropy, backward, fused AdamW step and zero_grad. Both models
start from identical weights (copied through lmlab's name map; the first losses are checked equal).
Rounds alternate between the libraries so drift in machine load hits both; each round's tokens/s
is taken over `--steps` steps after warm-up, and the median round is reported. Compiled rows use
`torch.compile` on each model (compile time excluded). `--bf16`: both run under bf16 autocast
over float32 weights (lmlab's `dtype = "bfloat16"` training), using the CPU's AMX matmuls.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from lmlab.model import Transformer
from lmlab.weights.hf import config_from_hf, load_state_dict


def make_models(args) -> tuple[torch.nn.Module, torch.nn.Module]:
    hf_cfg = transformers.GPT2Config(
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        vocab_size=args.vocab,
        n_positions=args.seq,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).train()
    ours = Transformer(config_from_hf(hf_cfg.to_dict())).train()
    load_state_dict(ours, hf.state_dict())
    return ours, hf


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, hf: bool) -> torch.Tensor:
    logits = model(input_ids=x).logits if hf else model(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


class Runner:
    """One library's model, optimizer and (optionally compiled) step."""

    def __init__(self, model: torch.nn.Module, hf: bool, compile: bool, bf16: bool) -> None:
        self.model, self.hf, self.bf16 = model, hf, bf16
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        self.fwd = torch.compile(model) if compile else model

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            loss = loss_of(self.fwd, x, y, self.hf)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def tok_s(self, batches: list, steps: int) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(*batches[i % len(batches)])
        return steps * batches[0][0].numel() / (time.perf_counter() - t0)


def measure(args, compile: bool) -> dict[str, float]:
    ours_m, hf_m = make_models(args)
    g = torch.Generator().manual_seed(1)
    batches = [
        (lambda t: (t[:, :-1], t[:, 1:]))(
            torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
        )
        for _ in range(4)
    ]
    ours, hf = Runner(ours_m, False, compile, args.bf16), Runner(hf_m, True, compile, args.bf16)
    t0 = time.perf_counter()
    l_ours, l_hf = ours.step(*batches[0]), hf.step(*batches[0])
    tol = 3e-2 if args.bf16 else 1e-3
    assert abs(l_ours - l_hf) < tol, f"first losses differ: lmlab {l_ours} vs transformers {l_hf}"
    for _ in range(2):  # warm-up (and compilation of the backward graphs)
        ours.step(*batches[1]), hf.step(*batches[1])
    warm = time.perf_counter() - t0
    rounds = {"lmlab": [], "transformers": []}
    for _ in range(args.rounds):
        rounds["lmlab"].append(ours.tok_s(batches, args.steps))
        rounds["transformers"].append(hf.tok_s(batches, args.steps))
    out = {k: statistics.median(v) for k, v in rounds.items()}
    out["warmup_s"] = warm
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--d-model", dest="d_model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; GPT-2 shape d={args.d_model} L={args.layers} H={args.heads} V={args.vocab}, "
        f"batch {args.batch} x {args.seq}, {'bf16 autocast' if args.bf16 else 'float32'}, AdamW fused"
    )
    eager = measure(args, compile=False)
    print(
        f"eager     lmlab {eager['lmlab']:8.0f} tok/s   transformers {eager['transformers']:8.0f} tok/s   "
        f"ratio {eager['lmlab'] / eager['transformers']:.2f}x"
    )
    if args.compile:
        comp = measure(args, compile=True)
        print(
            f"compiled  lmlab {comp['lmlab']:8.0f} tok/s   transformers {comp['transformers']:8.0f} tok/s   "
            f"ratio {comp['lmlab'] / comp['transformers']:.2f}x   (compile+warm-up {comp['warmup_s']:.0f} s)"
        )
        print(
            f"lmlab compiled / lmlab eager: {comp['lmlab'] / eager['lmlab']:.2f}x   "
            f"transformers compiled / lmlab eager: {comp['transformers'] / eager['lmlab']:.2f}x"
        )


if __name__ == "__main__":
    main()
