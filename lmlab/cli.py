"""`lmlab` command line: a thin layer over the library; subcommands live in `lmlab.commands`.

Every user error ends as one stderr line starting `error:` and exit status 2: an `LmlabError`
(or a missing file) from any command, and argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import NoReturn

from lmlab import commands
from lmlab.errors import LmlabError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors end with one `error: ... — see PROG --help` line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {one_line(message)} — see {self.prog} --help\n")


def one_line(text: object) -> str:
    """`text` on a single line (a message spread over lines is joined with spaces)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lmlab", description="A lab for small transformer language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = {}  # command name -> its parser (for `join_values`)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        name = info.name.replace("_", "-")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
        parser.commands[name] = p
    return parser


def join_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--train.lr 3e-4` written as `--train.lr=3e-4`, for commands that take `--key=value` settings.

    A `--key` its command does not declare takes the next word as its value once the command's
    positional arguments are all given (so `lmlab train CFG --resume` stays a bare flag), unless
    that word is itself a flag.
    """
    commands = getattr(parser, "commands", {})
    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in commands:
        return argv
    sub = commands[name]
    if not any(a.dest == "overrides" for a in sub._actions):
        return argv
    flags = {s: a.nargs != 0 for a in sub._actions for s in a.option_strings}
    needed = sum(1 for a in sub._actions if not a.option_strings and a.dest != "overrides")
    i = argv.index(name) + 1
    out = argv[:i]
    while i < len(argv):
        word = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if word.startswith("--") and "=" not in word and word != "--":
            if word in flags:
                out.append(word)
                if flags[word] and nxt is not None:
                    out.append(nxt)
                    i += 1
            elif needed <= 0 and nxt is not None and not _is_flag(nxt):
                out.append(f"{word}={nxt}")
                i += 1
            else:
                out.append(word)
        else:
            if not word.startswith("-"):
                needed -= 1
            out.append(word)
        i += 1
    return out


def _is_flag(word: str) -> bool:
    """Whether `word` is an option or a `key=value` setting rather than a value (`-1e-3` is one)."""
    key, sep, _ = word.partition("=")
    if sep and key.replace(".", "_").replace("-", "_").isidentifier():
        return True
    if not word.startswith("-"):
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmlab` script; user errors print one `error:` line, not a traceback."""
    parser = build_parser()
    argv = join_values(list(sys.argv[1:] if argv is None else argv), parser)
    args, extra = parser.parse_known_args(argv)
    if extra:  # `--key=value` settings may come anywhere after the command that takes them
        if not hasattr(args, "overrides"):
            print(
                f"error: unrecognized arguments: {' '.join(extra)} — see lmlab {args.command} "
                "--help",
                file=sys.stderr,
            )
            return 2
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args._main(args) or 0)
    except (LmlabError, FileNotFoundError) as e:
        sys.stdout.flush()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlmlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
