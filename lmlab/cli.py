"""`lmlab` command line: a thin layer over the library; subcommands live in `lmlab.commands`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from lmlab import commands
from lmlab.config import ConfigError
from lmlab.hooks import HookError
from lmlab.tokenizers import TokenizerError
from lmlab.weights.errors import WeightsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmlab", description="A lab for small transformer language models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(info.name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmlab` script; user errors print one line, not a traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `--key=value` settings may come anywhere after the command that takes them
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args._main(args) or 0)
    except (ConfigError, HookError, WeightsError, TokenizerError, FileNotFoundError) as e:
        print(f"lmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nlmlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
