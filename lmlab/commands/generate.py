"""`lmlab generate --model M --prompt TEXT`: complete a prompt, streaming the text."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

from lmlab.commands._threads import add_threads_argument, setup_threads

HELP = "complete a prompt with a model (greedy, sampling or beam search), streaming the text"


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """Model and sampling flags shared by `generate` and `chat`; one flag per `SamplingConfig`
    field (its type, default and help), so a new sampling knob is a new flag."""
    p.add_argument(
        "--model", required=True, help="preset, packaged name, HF folder, .gguf or checkpoint"
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer source when the model has none (e.g. gpt2)"
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    for name, kind, default, text in sampling_fields():
        p.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=default,
            help=f"{text} (default: {default})",
        )  # fmt: skip
    p.add_argument("--seed", type=int, default=None)
    add_threads_argument(p)
    p.add_argument("--dtype", default=None, help="float32 (default) or bfloat16")
    p.add_argument(
        "--compile", action="store_true", help="decode through torch.compile (slow first call)"
    )


def sampling_fields() -> list[tuple[str, type, object, str]]:
    """(name, flag type, default, help) of each `SamplingConfig` field, read from its source with
    `ast` so that building the flags (and `--help`) does not import torch."""
    path = Path(__file__).resolve().parent.parent / "generate" / "sampling.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SamplingConfig")
    out = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        (kind,) = [
            _TYPES[t.strip()]
            for t in ast.unparse(node.annotation).split("|")
            if t.strip() != "None"
        ]
        value, text = node.value, ""
        if isinstance(value, ast.Call) and ast.unparse(value.func) == "field":
            kw = {k.arg: k.value for k in value.keywords}
            value = kw["default"]
            text = ast.literal_eval(kw["metadata"]).get("help", "") if "metadata" in kw else ""
        out.append((node.target.id, kind, ast.literal_eval(value), text))
    return out


_TYPES = {"float": float, "int": int, "str": str}


def sampling_config(args: argparse.Namespace):
    """The `SamplingConfig` the flags ask for (checked: a bad value is an `InputError`)."""
    from lmlab.generate.sampling import SamplingConfig

    return SamplingConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)}
    )


def decode_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for `stream_generate` / `Chat` from the flags."""
    return dict(
        sampling=sampling_config(args), max_new_tokens=args.max_new_tokens, seed=args.seed,
        compile=args.compile,
    )  # fmt: skip


def check_sampling_args(args: argparse.Namespace, num_beams: int = 1) -> None:
    """Refuse bad sampling flags before any model is loaded."""
    from lmlab.generate.generate import check_settings

    check_settings(args.max_new_tokens, sampling_config(args), num_beams)


def load_for_generation(args: argparse.Namespace):
    """The model (eval mode) and its tokenizer, or the one `--tokenizer` names."""
    import lmlab
    from lmlab.commands._models import no_tokenizer_hint
    from lmlab.tokenizers import TokenizerError, check_vocab, load_tokenizer

    setup_threads(args.threads)
    model, tok = lmlab.load(args.model, dtype=args.dtype)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    if tok is None:
        raise TokenizerError(no_tokenizer_hint(args.model))
    check_vocab(tok, model)
    return model.eval(), tok


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the model's chat template"
    )
    p.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (not streamed)")


def main(args: argparse.Namespace) -> int:
    from lmlab.errors import InputError
    from lmlab.generate import generate, stream_generate
    from lmlab.generate.generate import check_context, check_ids

    if not args.prompt:
        raise InputError("--prompt is empty — give the text to complete")
    check_sampling_args(args, args.num_beams)
    model, tok = load_for_generation(args)
    prompt = args.prompt
    if args.chat:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    ids = tok.encode(prompt, add_special=not args.chat)
    if args.num_beams > 1:
        out = generate(
            model, [ids], tokenizer=tok, num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens, compile=args.compile,
        )  # fmt: skip
        print(args.prompt + out.texts[0])
        return 0
    check_ids(model, [ids])  # before the prompt is echoed: a refused prompt prints nothing
    check_context(model, len(ids), args.max_new_tokens)
    sys.stdout.write(args.prompt)
    for piece in stream_generate(model, ids, tok, **decode_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
