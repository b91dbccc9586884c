"""`lmlab chat --model M`: a streaming conversation using the model's own chat template.

A thin shell over `lmlab.generate.chat.Chat`, which keeps the history and trims it to the
model's context. Input that is not valid UTF-8 is read with replacement characters.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from lmlab.commands.generate import (
    add_sampling_arguments,
    check_sampling_args,
    decode_kwargs,
    load_for_generation,
)

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


def tolerant_stdio() -> None:
    """Undecodable input bytes become U+FFFD instead of ending the session (same for output)."""
    for stream in (sys.stdin, sys.stdout):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from lmlab.errors import InputError
    from lmlab.generate.chat import Chat

    if threading.current_thread() is threading.main_thread():
        # A shell that starts us in the background ignores SIGINT; Ctrl-C must still work here.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    tolerant_stdio()
    check_sampling_args(args)
    model, tok = load_for_generation(args)
    chat = Chat(model, tok, system=args.system, on_trim=notice, **decode_kwargs(args))
    print(
        f"lmlab chat with {args.model}: type a message; Ctrl-D or /exit quits, /reset forgets, "
        "Ctrl-C stops an answer."
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
        if line == "/reset":
            chat.reset()
            print("(conversation forgotten)")
            continue
        if not line:
            continue
        answer = chat.reply(line)
        sys.stdout.write("assistant> ")
        try:
            for piece in answer:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        except InputError as e:  # e.g. one message longer than the context: the session goes on
            sys.stdout.write("\n")
            sys.stdout.flush()
            notice(f"error: {e}")
            continue
        finally:
            answer.close()
        sys.stdout.write("\n")
