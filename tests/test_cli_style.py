"""One CLI style: `--key value` == `--key=value`, dashes == underscores, flat names for a recipe's
training settings, typed values with the flag named; a fast `--help`; `lmlab list` tells real
models from architecture-only presets; computing commands print their thread count."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab import devices
from lmlab.cli import build_parser, main, parse
from lmlab.commands import _threads
from lmlab.commands._models import no_tokenizer_hint
from lmlab.commands.generate import sampling_fields
from lmlab.config import ConfigError
from lmlab.packaged import PACKAGED
from lmlab.settings import field_type, parse_overrides

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _config(argv: list[str]):
    """What `argv` asks for, built without running the job: the command's config (run, train,
    rl) or its parsed flags (the others)."""
    parser = build_parser()
    args = parse(argv, parser)
    mod = parser.modules[args.command]
    if hasattr(mod, "build_config"):
        return mod.build_config(args)
    return {k: v for k, v in vars(args).items() if k != "_main"}


SAME = {
    "train": (
        ["train", "defaults", "--max_steps", "500", "--lr", "0.01", "--model.n_layers", "2",
         "--no-progress", "--batch-size", "4"],
        ["train", "defaults", "--max-steps=500", "--lr=0.01", "--model.n_layers=2",
         "--progress=false", "--batch_size=4"],
        ["train", "--max_steps", "500", "defaults", "--train.lr", "0.01", "--model.n-layers", "2",
         "--progress", "false", "--batch-size", "4"],
    ),
    "run": (
        ["run", "addition", "--max_steps", "500", "--threads", "2", "--digits", "2", "--progress",
         "false"],
        ["run", "addition", "--train.max_steps=500", "--train.threads=2", "--digits=2",
         "--no-progress"],
        ["run", "addition", "--max-steps=500", "--train.threads", "2", "--digits", "2",
         "--progress=false"],
    ),
    "rl": (
        ["rl", "grpo", "defaults", "--max_new_tokens", "16", "--lr", "1e-5", "--chat", "false",
         "--max_steps", "3"],
        ["rl", "grpo", "defaults", "--max-new-tokens=16", "--train.lr=1e-5", "--chat=false",
         "--train.max-steps=3"],
        ["rl", "grpo", "defaults", "--max-new-tokens", "16", "--train.lr", "1e-5", "--no-chat",
         "--max-steps=3"],
    ),
    "generate": (
        ["generate", "--model", "m", "--prompt", "hi", "--max-new-tokens", "32", "--top_k", "5",
         "--compile", "--threads", "1"],
        ["generate", "--model=m", "--prompt=hi", "--max_new_tokens=32", "--top-k=5",
         "--compile=true", "--threads=1"],
        ["generate", "--prompt", "hi", "--model", "m", "--max_new_tokens", "32", "--top-k", "5",
         "--compile=yes", "--threads", "1"],
    ),
    "eval": (
        ["eval", "--model", "m", "--batch_size", "2", "ppl", "--text", "t", "--max-chars", "9"],
        ["eval", "--model=m", "--batch-size=2", "ppl", "--text=t", "--max_chars=9"],
        ["eval", "--model", "m", "--batch-size", "2", "ppl", "--max_chars", "9", "--text", "t"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("command", list(SAME))
def test_key_space_value_and_key_equals_value_give_the_same_config(command):
    configs = [_config(argv) for argv in SAME[command]]
    assert configs[0] == configs[1] == configs[2]
    cfg = configs[0]
    if command == "train":
        assert (cfg.max_steps, cfg.lr, cfg.batch_size, cfg.progress) == (500, 0.01, 4, False)
        assert cfg.model_overrides["n_layers"] == 2
    elif command == "run":  # flat --max_steps / --threads reach the recipe's train settings
        assert (cfg.train.max_steps, cfg.train.threads, cfg.digits) == (500, 2, 2)
        assert cfg.train.progress is False
    elif command == "rl":
        assert (cfg.max_new_tokens, cfg.train.lr, cfg.chat, cfg.train.max_steps) == (
            16, 1e-5, False, 3)  # fmt: skip
    elif command == "generate":
        assert (cfg["max_new_tokens"], cfg["top_k"], cfg["compile"], cfg["threads"]) == (
            32, 5, True, 1)  # fmt: skip
    else:
        assert (cfg["batch_size"], cfg["max_chars"], cfg["text"]) == (2, 9, Path("t"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "defaults", "--max_steps", "abc"], r"max_steps='abc' is not a whole number"),
        (["train", "defaults", "--max_steps"], r"'--max_steps' has no value; write it as"),
        (["run", "addition", "--lr", "fast"], r"train\.lr='fast' is not a number"),
        (["run", "addition", "--progress=maybe"], r"progress='maybe' is not a boolean"),
        (["rl", "grpo", "defaults", "--chat", "--max_steps", "1.5"], r"max_steps=1\.5 is not a "),
        (["generate", "--model", "m", "--prompt", "p", "--compile=maybe"],
         r"--compile='maybe' is not a boolean; write --compile \(true\) or --compile=false"),
        (["generate", "--model", "m", "--prompt", "p", "--bogus", "1"],
         r"unrecognized arguments: --bogus 1 — see lmlab generate --help"),
    ],
)  # fmt: skip
def test_bad_values_name_the_flag_in_one_line(argv, message, capsys):
    assert main([*argv, "--show-config"] if argv[0] != "generate" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err), err


def test_argparse_type_errors_name_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", "m", "--prompt", "p", "--max_new_tokens", "many"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "argument --max-new-tokens: invalid int value: 'many'" in line


@dataclasses.dataclass
class _Train:
    lr: float = 1.0
    threads: int = 0


@dataclasses.dataclass
class _Sft:
    lr: float = 2.0


@dataclasses.dataclass
class _Two:
    threads: int = 1
    train: _Train = dataclasses.field(default_factory=_Train)
    sft: _Sft = dataclasses.field(default_factory=_Sft)


def test_flat_keys_resolve_only_when_unambiguous():
    # a top-level field wins over the group's field of the same name
    assert parse_overrides(_Two, ["--threads=3"]) == {"threads": 3}
    assert parse_overrides(_Two, ["--train.threads=3"]) == {"train": {"threads": 3}}
    assert field_type(_Two, "threads") is int and field_type(_Two, "train.lr") is float
    with pytest.raises(ConfigError, match=r"--lr is a setting of train and sft; write "
                       r"--train\.lr or --sft\.lr"):  # fmt: skip
        parse_overrides(_Two, ["--lr=3"])
    assert field_type(_Two, "lr") is None and field_type(_Two, "nope") is None


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys\nfrom lmlab.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['train', '--help'], ['generate', '--help'],"
        " ['rl', '--help'], ['eval', '--help'], ['finetune', 'classify', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr.strip() == "False", r.stderr[-2000:]
    best = float("inf")
    for _ in range(2):  # best of two: a loose bound on a shared machine, not a benchmark
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "lmlab", "--help"], env=ENV, capture_output=True)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0 and b"--key value" in r.stdout
    assert best < 3.0, f"lmlab --help took {best:.2f} s"


def test_sampling_flags_read_from_source_match_sampling_config():
    from typing import get_args, get_type_hints

    from lmlab.generate.sampling import SamplingConfig

    hints = get_type_hints(SamplingConfig)
    want = []
    for f in dataclasses.fields(SamplingConfig):
        (kind,) = [a for a in get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        want.append((f.name, kind, f.default, f.metadata.get("help", "")))
    assert sampling_fields() == want


def test_list_names_recipes_presets_and_the_packaged_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    models = out.split("packaged real models")[1]
    for m in PACKAGED.values():  # the three packaged real models, installed or not, and pip
        (line,) = [ln for ln in models.splitlines() if ln.split()[:1] == [m.name]]
        assert ("not installed" in line or "installed" in line) and m.install in line
    assert {"smollm2-135m-instruct", "gemma3-270m", "minilm-l6"} <= set(PACKAGED)
    assert "recipes (lmlab run NAME)" in out and "\n  addition " in out
    assert "architecture only (random weights" in out
    (smol,) = [ln for ln in out.splitlines() if ln.split()[:1] == ["smollm2-135m"]]
    assert "--model smollm2-135m-instruct" in smol
    assert main(["list", "--presets"]) == 0
    presets = capsys.readouterr().out
    assert "gpt2-tiny" in presets and "addition" not in presets


def test_preset_without_tokenizer_says_it_is_architecture_only(capsys):
    msg = no_tokenizer_hint("smollm2-135m")
    assert "architecture-only preset" in msg and "--model smollm2-135m-instruct" in msg
    assert main(["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "'gpt2-tiny' is an architecture-only preset (random weights, no tokenizer)" in line


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_default_is_measured_and_printed(monkeypatch, capsys, keep_threads, tmp_path):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "default_threads", lambda: (1, "test reason"))
    torch.set_num_threads(2)
    assert _threads.setup_threads() == 1 and torch.get_num_threads() == 1
    assert capsys.readouterr().err == "threads: 1 (test reason)\n"
    assert _threads.setup_threads(2, "--threads") == 2 and torch.get_num_threads() == 2
    assert capsys.readouterr().err == "threads: 2 (--threads)\n"
    # a command that computes chooses its threads before loading the model
    (tmp_path / "t.txt").write_text("hello")
    assert main(["eval", "--model", "gpt2-tiny", "ppl", "--text", str(tmp_path / "t.txt")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "threads: 1 (test reason)" and err[1].startswith("error: ")
