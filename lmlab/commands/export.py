"""`lmlab export SRC OUT`: convert any model lmlab can load to a transformers folder or a checkpoint."""

from __future__ import annotations

import argparse
import sys

HELP = "export a model (preset, folder, .gguf, checkpoint, hub id) to the HF layout or an lmlab checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", help="what lmlab.load accepts: preset, HF folder, .gguf file, checkpoint, hub id"
    )
    p.add_argument("out", help="output folder (replaced atomically)")
    p.add_argument(
        "--format",
        choices=("hf", "lmlab"),
        default="hf",
        help="hf: config.json + model.safetensors for transformers (GPT-2, Llama, Mistral); "
        "lmlab: an lmlab checkpoint (any architecture)",
    )
    p.add_argument(
        "--dtype", default=None, help="cast the weights, e.g. float32, bfloat16, float16"
    )


def main(args: argparse.Namespace) -> int:
    from lmlab.tokenizers import TokenizerError
    from lmlab.weights.checkpoint import save_checkpoint
    from lmlab.weights.errors import WeightsError
    from lmlab.weights.export import export_hf
    from lmlab.weights.load import load

    try:
        model, tok = load(args.src, dtype=args.dtype)
        if args.format == "hf":
            out = export_hf(model, args.out, tok)
        else:
            out = save_checkpoint(model, args.out, tok)
    except (WeightsError, TokenizerError) as e:
        print(f"lmlab export: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {out} ({args.format}, {model.cfg.name}, {model.num_params() / 1e6:.1f}M parameters)"
    )
    return 0
