"""`lmlab` command line: a thin layer over the library; subcommands live in `lmlab.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from lmlab import commands
from lmlab.config import ConfigError
from lmlab.hooks import HookError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="A lab for small transformer language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(info.name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmlab` script; user errors print one line, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except (ConfigError, HookError, FileNotFoundError) as e:
        print(f"lmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlmlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
