"""CLI subcommands: each module defines `HELP`, `add_arguments(parser)` and `main(args) -> int`.

The module name with `_` -> `-` is the command name; `lmlab.cli` discovers them, so adding a
command never touches another file.
"""
