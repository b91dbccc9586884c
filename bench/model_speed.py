"""Forward+backward training throughput: lmlab vs transformers on the same shapes, same run.

    python bench/model_speed.py [--batch 4] [--seq 256] [--steps 5] [--dtype float32]

Both models get identical weights (copied through lmlab's name map); each step is a full
forward, cross-entropy loss and backward. Two pairs: the same external loss on both models' logits
(`F.cross_entropy`), and each library's own training loss (`model(tokens, targets=...)`, which
never materializes the logits, vs transformers' `model(input_ids, labels=...)`). Runs alternate
between the libraries so drift in machine load hits all equally. Prints tokens/s and ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
import transformers

from lmlab.model import Transformer
from lmlab.weights.hf import config_from_hf, load_state_dict

SHAPES = {
    "gpt2-small": lambda: transformers.GPT2Config(
        n_embd=768,
        n_layer=12,
        n_head=12,
        n_positions=1024,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # lmlab runs without dropout too
    ),
    "llama-shaped": lambda: transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
}


def step_ours(model, tokens):
    logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()


def step_hf(model, tokens):
    logits = model(input_ids=tokens).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()


def step_ours_targets(model, tokens):
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -100)], 1)
    model(tokens, targets=targets).backward()


def step_hf_labels(model, tokens):
    model(input_ids=tokens, labels=tokens).loss.backward()


def timed(fn, model, tokens) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    fn(model, tokens)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention backend"
    )
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time lmlab under torch.compile (compile excluded)",
    )
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; batch {args.batch} x {args.seq}, {args.dtype}, "
        f"transformers attn={args.attn}"
    )
    for shape in args.shapes:
        hf_cfg = SHAPES[shape]()
        hf_cfg._attn_implementation = args.attn
        hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).to(dtype).train()
        ours = Transformer(config_from_hf(hf_cfg.to_dict())).to(dtype).train()
        load_state_dict(ours, hf.state_dict())
        tokens = torch.randint(0, hf_cfg.vocab_size, (args.batch, args.seq))
        steps = {"ours": (step_ours, ours), "hf": (step_hf, hf),
                 "ours_targets": (step_ours_targets, ours), "hf_labels": (step_hf_labels, hf)}  # fmt: skip
        for _ in range(2):  # warm-up
            for fn, model in steps.values():
                timed(fn, model, tokens)
        compiled = None
        if args.compile:
            compiled = torch.compile(ours)
            for _ in range(2):  # compilation happens here, outside the timed steps
                timed(step_ours, compiled, tokens)
        times = {k: [] for k in steps}
        t_comp = []
        for _ in range(args.steps):
            for k, (fn, model) in steps.items():
                times[k].append(timed(fn, model, tokens))
            if compiled is not None:
                t_comp.append(timed(step_ours, compiled, tokens))
        n = args.batch * args.seq
        tps = {k: n / min(v) for k, v in times.items()}
        ours_tps, hf_tps = tps["ours"], tps["hf"]
        line = (
            f"{shape:13s} logits + F.cross_entropy: lmlab {ours_tps:6.0f} tok/s, transformers "
            f"{hf_tps:6.0f} tok/s, ratio {ours_tps / hf_tps:.2f}x | own losses (targets= vs "
            f"labels=): {tps['ours_targets']:6.0f} vs {tps['hf_labels']:6.0f} tok/s, ratio "
            f"{tps['ours_targets'] / tps['hf_labels']:.2f}x"
        )
        if t_comp:
            comp_tps = n / min(t_comp)
            line += (
                f"   lmlab compiled {comp_tps:8.0f} tok/s, {comp_tps / hf_tps:.2f}x transformers"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
