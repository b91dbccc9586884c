"""`lmlab` command line: a thin layer over the library; subcommands live in `lmlab.commands`.

Every user error ends as one stderr line starting `error:` and exit status 2: an `LmlabError`
(or a missing file) from any command, and argparse's own usage errors.

One flag style everywhere: `--key value` and `--key=value` are the same, and so are dashes and
underscores (`--max-new-tokens 32` == `--max_new_tokens=32`). A boolean flag alone means true;
`--flag=false` (or `--no-flag`) means false. The argument list is parsed before torch is imported,
so `lmlab --help` and `lmlab COMMAND --help` are fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import typing
from types import ModuleType
from typing import Any, NoReturn

from lmlab import commands
from lmlab.errors import InputError, LmlabError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors end with one `error: ... — see PROG --help` line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {one_line(message)} — see {self.prog} --help\n")


def one_line(text: object) -> str:
    """`text` on a single line (a message spread over lines is joined with spaces)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def command_modules() -> dict[str, ModuleType]:
    """Command name -> its module (`lmlab.commands.NAME`; helpers named `_*` are not commands)."""
    return {
        info.name.replace("_", "-"): importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name)
        if not info.name.startswith("_")
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lmlab",
        description="A lab for small transformer language models.",
        epilog="Flags: --key value and --key=value are the same, as are dashes and underscores "
        "(--max-new-tokens 32 = --max_new_tokens=32); a boolean flag alone means true, "
        "--flag=false or --no-flag false. Recipes' training settings are --train.KEY or just "
        "--KEY. `lmlab list` shows recipes, presets and packaged real models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = {}  # command name -> its parser (for `join_values`)
    parser.modules = {}  # command name -> its module
    for name, mod in command_modules().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
        parser.commands[name] = p
        parser.modules[name] = mod
    return parser


def join_values(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`argv` in the one spelling argparse and the settings parser read.

    Declared options get their declared spelling (`--max_new_tokens=32` -> `--max-new-tokens=32`)
    and a boolean one given a value (`--compile=false`, `--no-compile`) is kept or dropped. For
    commands that take `--key=value` settings (`run`, `train`, `rl`), `--key value` becomes
    `--key=value`: a setting the command's config types as non-boolean always takes the next word;
    a boolean one takes it only when it is true/false; an unknown key takes it once the command's
    positional arguments are all given (so `lmlab train CFG --resume` stays a bare flag).
    """
    cmds = getattr(parser, "commands", {})
    name = next((a for a in argv if not a.startswith("-")), None)
    if name not in cmds:
        return argv
    sub = cmds[name]
    mod = getattr(parser, "modules", {}).get(name)
    options = _options(sub)
    takes_settings = any(a.dest == "overrides" for a in sub._actions)
    helping = "-h" in argv or "--help" in argv
    needed = sum(1 for a in sub._actions if not a.option_strings and a.dest != "overrides")
    words = [a for a in argv[argv.index(name) + 1 :] if not a.startswith("-")]
    i = argv.index(name) + 1
    out = argv[:i]
    while i < len(argv):
        word, nxt = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        i += 1
        if word == "--":
            out += argv[i - 1 :]
            break
        if not word.startswith("--"):
            needed -= not word.startswith("-")
            out.append(word)
            continue
        key, eq, value = word[2:].partition("=")
        action = options.get(_canon(key))
        negated = options.get(_canon(key)[3:]) if _canon(key).startswith("no-") else None
        if action is None and negated is not None and negated.nargs == 0 and not eq:
            continue  # `--no-compile`: a store_true flag left at its default
        if action is not None:
            flag = _declared(action, key)
            if action.nargs == 0:
                if not eq or _boolean(value, flag):
                    out.append(flag)
            elif eq:
                out.append(f"{flag}={value}")
            else:
                out.append(flag)
                if nxt is not None:
                    out.append(nxt)
                    i += 1
            continue
        if not takes_settings or eq or helping:
            out.append(word)
            continue
        hint = _setting_type(mod, key, words)
        negates = hint is None and key.replace("-", "_").startswith("no_")
        if negates and _is_bool(_setting_type(mod, key[3:], words)):
            out.append(f"--{key[3:]}=false")
            continue
        if _is_bool(hint):
            if nxt is not None and nxt.lower() in TRUE + FALSE:
                out.append(f"{word}={nxt}")
                i += 1
            else:
                out.append(word)
        elif nxt is not None and not _is_flag(nxt) and (hint is not None or needed <= 0):
            out.append(f"{word}={nxt}")
            i += 1
        else:
            out.append(word)
    return out


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every `--option` of `parser` and of its sub-commands (`eval ppl`), by its `_canon` name."""
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        for s in a.option_strings:
            if s.startswith("--"):
                out[_canon(s[2:])] = a
        if isinstance(a, argparse._SubParsersAction):
            for p in a.choices.values():
                out = {**_options(p), **out}
    return out


def _is_bool(hint: Any) -> bool:
    """Whether a setting of type `hint` is a boolean (`bool` or `bool | None`)."""
    args = set(typing.get_args(hint))
    return hint is bool or (bool in args and args <= {bool, type(None)})


def _canon(key: str) -> str:
    return key.replace("_", "-")


def _declared(action: argparse.Action, key: str) -> str:
    """The declared spelling of the option the user wrote as `--key`."""
    return next(
        (s for s in action.option_strings if _canon(s[2:]) == _canon(key)),
        action.option_strings[-1],
    )


def _boolean(value: str, flag: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise InputError(f"{flag}={value!r} is not a boolean; write {flag} (true) or {flag}=false")


def _setting_type(mod: ModuleType | None, key: str, words: list[str]) -> Any:
    """The type the command's config gives setting `key` (None when unknown or not typed)."""
    find = getattr(mod, "setting_type", None)
    if find is None:
        return None
    try:
        return find(key, words)
    except LmlabError:
        return None


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


def parse(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The arguments `argv` asks for, without running anything (`args.overrides` collects the
    `--key=value` settings). A usage error exits with status 2 after one `error:` line."""
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(join_values(list(argv), parser))
    if extra:  # `--key=value` settings may come anywhere after the command that takes them
        if not hasattr(args, "overrides"):
            raise InputError(
                f"unrecognized arguments: {' '.join(extra)} — see lmlab {args.command} --help"
            )
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lmlab` script; user errors print one `error:` line, not a traceback."""
    command = "lmlab"
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        command = f"lmlab {args.command}"
        return int(args._main(args) or 0)
    except (LmlabError, FileNotFoundError) as e:
        sys.stdout.flush()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` etc., which closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no 2nd error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
