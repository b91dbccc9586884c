"""`lmlab convert RUN OUT`: turn a training run (its out_dir or checkpoint file) into a model folder
that `lmlab.load`, `lmlab generate` and (with --format hf) transformers read."""

from __future__ import annotations

import argparse

from lmlab.commands.export import add_format_arguments

HELP = (
    "turn a training run folder (or its ckpt.pt) into a loadable model folder (HF or lmlab format)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="out_dir of an `lmlab train` run, or one of its checkpoint files")
    p.add_argument("out", help="output folder: new or empty (see --overwrite)")
    add_format_arguments(p)
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer to save with the model (what load_tokenizer accepts: gpt2, a folder, ...); "
        "default: the one the run's data was prepared with, when it can be found",
    )


def main(args: argparse.Namespace) -> int:
    from lmlab.commands.export import write_model
    from lmlab.weights.load import as_dtype, build_model
    from lmlab.weights.training import read_training_checkpoint, run_tokenizer
    from lmlab.weights.writer import check_target

    check_target(args.out, overwrite=args.overwrite)  # before reading: refuse early and cheaply
    ck = read_training_checkpoint(args.run)
    model = build_model(ck.cfg, ck.state_dict, dtype=as_dtype(args.dtype), where=ck.path)
    if args.tokenizer:
        from lmlab.tokenizers import check_vocab, load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        check_vocab(tok, model)
    else:
        tok = run_tokenizer(ck.train_config, model.cfg)
    out = write_model(
        model, tok, args.out, args.format, args.overwrite, source=ck.path, step=ck.step
    )
    note = "" if tok is not None else "; no tokenizer found: pass --tokenizer to include one"
    print(f"wrote {out} ({args.format}, {model.cfg.name}, step {ck.step}, from {ck.path}){note}")
    return 0
