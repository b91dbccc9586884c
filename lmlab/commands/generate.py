"""`lmlab generate --model M --prompt TEXT`: complete a prompt, streaming the text."""

from __future__ import annotations

import argparse
import sys

HELP = "complete a prompt with a model (greedy, sampling or beam search), streaming the text"


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """Model and sampling flags shared by `generate` and `chat`."""
    p.add_argument(
        "--model", required=True, help="preset, packaged name, HF folder, .gguf or checkpoint"
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer source when the model has none (e.g. gpt2)"
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default=None, help="float32 (default) or bfloat16")
    p.add_argument(
        "--compile", action="store_true", help="decode through torch.compile (slow first call)"
    )


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, compile=args.compile,
    )  # fmt: skip


def check_sampling_args(args: argparse.Namespace, num_beams: int = 1) -> None:
    """Refuse bad sampling flags before any model is loaded."""
    from lmlab.generate.generate import STREAM_SETTINGS, check_settings
    from lmlab.generate.sampling import SamplingConfig

    kw = sampling_kwargs(args)
    sampling = SamplingConfig(**{k: v for k, v in kw.items() if k in STREAM_SETTINGS})
    check_settings(args.max_new_tokens, sampling, num_beams)


def load_for_generation(args: argparse.Namespace):
    """The model (eval mode) and its tokenizer, or the one `--tokenizer` names."""
    import lmlab
    from lmlab.tokenizers import TokenizerError, check_vocab, load_tokenizer

    model, tok = lmlab.load(args.model, dtype=args.dtype)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    if tok is None:
        raise TokenizerError(
            f"model {args.model!r} comes without a tokenizer — pass --tokenizer (a folder with "
            "tokenizer.json, a .gguf file, or gpt2)"
        )
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
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}])
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
    for piece in stream_generate(model, ids, tok, **sampling_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
