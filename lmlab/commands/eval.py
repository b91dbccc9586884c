"""`lmlab eval`: perplexity over a text file, or HellaSwag-style multiple choice over a jsonl file."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

HELP = "evaluate a model: perplexity of a text (ppl) or multiple-choice accuracy (choice)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="preset, packaged name, HF folder, .gguf file or checkpoint"
    )
    p.add_argument(
        "--tokenizer", help="tokenizer source when the model has none (see load_tokenizer)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: as stored)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="windows or endings per forward pass")
    p.add_argument("--json", type=Path, help="also write the result to this JSON file")
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    ppl = sub.add_parser("ppl", help="perplexity over a text file (sliding window)")
    ppl.add_argument("--text", type=Path, required=True, help="UTF-8 text file")
    ppl.add_argument("--max-chars", type=int, default=None, help="only the first N characters")
    ppl.add_argument(
        "--context", type=int, default=None, help="window length in tokens (default 1024)"
    )
    ppl.add_argument(
        "--stride", type=int, default=None, help="window step in tokens (default context/2)"
    )
    ch = sub.add_parser("choice", help="HellaSwag-format multiple choice (acc, acc_norm)")
    ch.add_argument(
        "--data", type=Path, required=True, help="jsonl with ctx (or ctx_a/ctx_b), endings, label"
    )
    ch.add_argument("--limit", type=int, default=None, help="only the first N items")


def main(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.eval import perplexity, read_hellaswag, score_choices
    from lmlab.tokenizers import TokenizerError, check_vocab, load_tokenizer

    try:
        model, tok = lmlab.load(args.model, dtype=args.dtype, device=args.device)
        if args.tokenizer:
            tok = load_tokenizer(args.tokenizer)
        if tok is None:
            raise TokenizerError(
                f"model {args.model!r} comes without a tokenizer; pass --tokenizer"
            )
        check_vocab(tok, model)
        if args.task == "ppl":
            if not args.text.is_file():
                raise FileNotFoundError(
                    f"{args.text} not found; pass --text with a UTF-8 text file"
                )
            text = args.text.read_text(encoding="utf-8")[: args.max_chars]
            r = perplexity(model, tok, text, context=args.context, stride=args.stride,
                           batch_size=args.batch_size, device=args.device)  # fmt: skip
            result = asdict(r)
            print(f"perplexity {r.ppl:.4f}  (nll {r.nll:.4f} nats/token over {r.n_tokens} tokens, "
                  f"context {r.context}, stride {r.stride})")  # fmt: skip
        else:
            items = read_hellaswag(args.data, limit=args.limit)
            r = score_choices(model, tok, items, batch_size=args.batch_size, device=args.device)
            result = asdict(r)
            print(f"acc {r.acc:.4f}  acc_norm {r.acc_norm:.4f}  over {r.n} items")
    except (ValueError, OSError) as e:  # TokenizerError and WeightsError are ValueErrors
        print(f"lmlab eval: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        from lmlab.runs import atomic_write

        atomic_write(
            args.json, json.dumps({"model": args.model, "task": args.task, **result}, indent=1)
        )
    return 0
