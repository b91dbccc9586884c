"""`lmlab export SRC OUT`: convert any model lmlab can load to a transformers folder or a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmlab.model import Transformer
    from lmlab.tokenizers.base import Tokenizer

HELP = "export a model (preset, folder, .gguf, checkpoint, hub id) to the HF layout or an lmlab checkpoint"


def add_format_arguments(p: argparse.ArgumentParser) -> None:
    """`--format`, `--overwrite` and `--dtype`, shared with `lmlab convert`."""
    p.add_argument(
        "--format",
        choices=("hf", "lmlab"),
        default="hf",
        help="hf: config.json + model.safetensors for transformers (GPT-2, Llama, Mistral); "
        "lmlab: an lmlab checkpoint (any architecture)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder, replacing only the files this writes "
        "(config.json, model*.safetensors, tokenizer files); every other file is kept",
    )
    p.add_argument(
        "--dtype", default=None, help="cast the weights, e.g. float32, bfloat16, float16"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", help="what lmlab.load accepts: preset, HF folder, .gguf file, checkpoint, hub id"
    )
    p.add_argument("out", help="output folder: new or empty (see --overwrite)")
    add_format_arguments(p)


def write_model(
    model: Transformer,
    tokenizer: Tokenizer | None,
    out: str | Path,
    fmt: str,
    overwrite: bool,
    **metadata: Any,
) -> Path:
    """Write `model` to `out` as `fmt` ("hf" or "lmlab"); returns the folder."""
    from lmlab.weights.checkpoint import save_checkpoint
    from lmlab.weights.export import export_hf

    if fmt == "hf":
        return export_hf(model, out, tokenizer, overwrite=overwrite)
    return save_checkpoint(model, out, tokenizer, overwrite=overwrite, metadata=metadata)


def main(args: argparse.Namespace) -> int:
    from lmlab.weights.load import load
    from lmlab.weights.writer import check_target

    check_target(args.out, overwrite=args.overwrite)  # before loading: refuse early and cheaply
    model, tok = load(args.src, dtype=args.dtype)
    out = write_model(model, tok, args.out, args.format, args.overwrite)
    print(
        f"wrote {out} ({args.format}, {model.cfg.name}, {model.num_params() / 1e6:.1f}M parameters)"
    )
    return 0
