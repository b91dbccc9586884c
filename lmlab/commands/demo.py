"""`lmlab demo`: build a preset, run it once, print its hook points and parameter count."""

from __future__ import annotations

import argparse
import time

from lmlab.errors import InputError

HELP = "build a model preset, run a forward pass with a cache, print hook names and parameters"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset", default="gpt2-tiny", help="model preset (see `lmlab list --presets`)"
    )
    p.add_argument("--seq", type=int, default=32, help="tokens in the random input")


def main(args: argparse.Namespace) -> int:
    import torch

    from lmlab.families import preset
    from lmlab.interp.activation_cache import run_with_cache
    from lmlab.model import Transformer

    torch.manual_seed(0)
    cfg = preset(args.preset)
    if not 1 <= args.seq <= cfg.max_seq_len:
        raise InputError(
            f"--seq {args.seq} must be in 1..{cfg.max_seq_len} (the context of {args.preset})"
        )
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, args.seq))
    t0 = time.perf_counter()
    with torch.no_grad():
        out, cache = run_with_cache(model, tokens)
    ms = (time.perf_counter() - t0) * 1e3
    names = model.hook_names()
    print(
        f"preset {args.preset}: {cfg.family}, {model.num_params():,} parameters, "
        f"{cfg.n_layers} layers, d_model {cfg.d_model}"
    )
    print(f"{len(names)} hook points; blocks.0 has:")
    for n in names:
        if n.startswith("blocks.0.") or not n.startswith("blocks."):
            print(f"  {n:36s} {tuple(cache[n].shape) if n in cache else ''}")
    print(
        f"forward with full cache on {tuple(tokens.shape)} tokens: {ms:.1f} ms, output {tuple(out.shape)}"
    )
    return 0
