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
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(info.name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmlab` script; user errors print one `error:` line, not a traceback."""
    parser = build_parser()
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
