"""`lmlab chat --model M`: a streaming conversation using the model's own chat template."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from lmlab.commands.generate import add_sampling_arguments, load_for_generation, sampling_kwargs

HELP = "chat with a model in the terminal (its chat template, streamed answers; Ctrl-C stops an answer)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="system message")
    p.set_defaults(max_new_tokens=256)


def build_args(argv: list[str]) -> argparse.Namespace:
    """Parse `lmlab chat` flags (for scripts and tests)."""
    p = argparse.ArgumentParser(prog="lmlab chat")
    add_arguments(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from lmlab.generate import stream_generate

    if threading.current_thread() is threading.main_thread():
        # A shell that starts us in the background ignores SIGINT; Ctrl-C must still work here.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    model, tok = load_for_generation(args)
    tok.apply_chat_template([{"role": "user", "content": "hi"}])  # fail early without a template
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print(
        f"lmlab chat with {args.model}: type a message; Ctrl-D or /exit quits, Ctrl-C stops an answer."
    )
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print("\nbye")
            return 0
        if line in ("/exit", "/quit"):
            print("bye")
            return 0
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        ids = tok.encode(tok.apply_chat_template(messages))
        answer = []
        sys.stdout.write("assistant> ")
        try:
            for piece in stream_generate(model, ids, tok, **sampling_kwargs(args)):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer).strip()})
