"""`lmlab eval`: perplexity over a text file, HellaSwag-style multiple choice over a jsonl file, or
HellaSwag's validation split (a given file, or downloaded once into the data dir)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from lmlab.commands._threads import add_threads_argument, setup_threads
from lmlab.errors import DataError, InputError, LmlabError, MissingFileError

if TYPE_CHECKING:
    from lmlab.eval import ChoiceItem

HELP = (
    "evaluate a model: perplexity of a text (ppl), multiple-choice accuracy (choice) or HellaSwag "
    "(hellaswag)"
)
METRICS = (
    "acc: argmax of the ending's summed log-likelihood; acc_norm: of that sum per character of "
    "the ending (lm-evaluation-harness's acc_norm); acc_norm_tokens: of that sum per token "
    "(nanoGPT/llm.c's acc_norm)"
)


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
    add_threads_argument(p)
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
    hs = sub.add_parser(
        "hellaswag",
        help="HellaSwag validation accuracy (acc, acc_norm, acc_norm_tokens)",
        description="HellaSwag validation accuracy, prompted as lm-evaluation-harness does. "
        + METRICS,
    )
    hs.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the official hellaswag_val.jsonl (default: DATA_DIR/hellaswag_val.jsonl, fetched "
        "once from the hub dataset Rowan/hellaswag when online)",
    )
    hs.add_argument("--limit", type=int, default=None, help="only the first N items (a quick run)")


def main(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.devices import check_device
    from lmlab.tokenizers import TokenizerError, check_vocab, load_tokenizer

    if args.device is not None:
        check_device(args.device)
    if args.task == "ppl":
        text = read_text(args.text, args.max_chars)
    if args.task in ("choice", "hellaswag"):
        items = read_items(args.data, args.limit)
    setup_threads(args.threads)
    model, tok = lmlab.load(args.model, dtype=args.dtype, device=args.device)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    if tok is None:
        from lmlab.commands._models import no_tokenizer_hint

        raise TokenizerError(no_tokenizer_hint(args.model))
    check_vocab(tok, model)
    with library_errors():
        if args.task == "ppl":
            from lmlab.eval import perplexity

            r = perplexity(model, tok, text, context=args.context, stride=args.stride,
                           batch_size=args.batch_size, device=args.device)  # fmt: skip
            print(f"perplexity {r.ppl:.4f}  (nll {r.nll:.4f} nats/token over {r.n_tokens} "
                  f"tokens, context {r.context}, stride {r.stride})")  # fmt: skip
        else:
            from lmlab.eval import score_choices

            r = score_choices(model, tok, items, batch_size=args.batch_size, device=args.device)
            print(f"acc {r.acc:.4f}  acc_norm {r.acc_norm:.4f}  acc_norm_tokens "
                  f"{r.acc_norm_tokens:.4f}  over {r.n} items")  # fmt: skip
    if args.json:
        from lmlab.runs import atomic_write

        result = {"model": args.model, "task": args.task, **asdict(r)}
        atomic_write(args.json, json.dumps(result, indent=1))
    return 0


def read_items(path: Path | None, limit: int | None) -> list[ChoiceItem]:
    """The multiple-choice items: `path`, or HellaSwag's validation file from the data dir / hub."""
    from lmlab.eval import read_hellaswag
    from lmlab.eval.hellaswag import hellaswag_path

    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit} must be >= 1 (or leave it out for every item)")
    with library_errors():
        return read_hellaswag(path if path is not None else hellaswag_path(), limit=limit)


def read_text(path: Path, max_chars: int | None) -> str:
    """The UTF-8 text to score; a missing or undecodable file is a one-line error."""
    if not path.is_file():
        raise MissingFileError(f"{path} not found — pass --text with a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")[:max_chars]
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text ({e.reason} at byte {e.start}) — convert it to UTF-8"
        ) from None


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """The eval library reports bad data and settings as plain ValueErrors: make them user errors."""
    try:
        yield
    except LmlabError:
        raise
    except FileNotFoundError as e:
        raise MissingFileError(str(e)) from e
    except ValueError as e:
        raise DataError(str(e)) from e
