"""Hostile inputs to training, resume, GRPO and corpus preparation: each fails with one clear
`error:` line (CLI) or one-line `LmlabError` (API) and leaves every existing file byte-identical.

Covers: `--resume` with changed settings (refused, naming each), with no checkpoint or only damaged
ones; a rerun into a run folder without `--resume` (train and GRPO); a loss that turns NaN; a token
folder with an empty split; `prepare` on binary, latin-1, NUL-holding and malformed JSONL input,
a missing input (no `--out` folder left behind), a split that would be empty, a foreign `--out`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import BadInput, check_bad_input

from lmlab.data.prepare import prepare
from lmlab.data.tasks.addition import CHARS
from lmlab.data.tokens import write_meta, write_tokens
from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.rl import GRPOConfig, GRPOTrainer
from lmlab.rl.config import grpo_train_config
from lmlab.rl.tasks import RLTask
from lmlab.settings import from_toml
from lmlab.tokenizers.char import CharTokenizer
from lmlab.train import TrainConfig
from lmlab.train.run import train

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
model = "gpt2-tiny"
data = "task:induction"
batch_size = 8
max_steps = 2
lr = 3e-3
warmup_steps = 1
eval_interval = 0
eval_iters = 1
log_interval = 1
checkpoint_interval = 1
tensorboard = false
progress = false
threads = 1
seed = 7

[model_overrides]
d_model = 32
n_layers = 1
n_heads = 2

[data_options]
vocab_size = 20
seq_len = 8
"""


# ---------------------------------------------------------------------- setups
def _config(d: Path) -> None:
    (d / "cfg.toml").write_text(CONFIG)


def _trained(d: Path) -> None:
    """cfg.toml and a finished 2-step run of it in d/run (checkpoints at steps 1 and 2)."""
    _config(d)
    train(from_toml(TrainConfig, d / "cfg.toml", [f"--out_dir={d}/run"]))


def _trained_then_damaged(d: Path) -> None:
    _trained(d)
    newest, older = d / "run" / "ckpt_000002.pt", d / "run" / "ckpt_000001.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    older.write_bytes(b"")


def _empty_val_folder(d: Path) -> None:
    """A token folder as the old prepare wrote it for a few .txt files: val shards empty."""
    _config(d)
    write_meta(d / "D", 50, "uint16")
    write_tokens(d / "D" / "train_000000.bin", np.arange(500) % 50)
    write_tokens(d / "D" / "val_000000.bin", np.zeros(0, dtype=np.int64))


def _damaged_meta(d: Path) -> None:
    _empty_val_folder(d)
    (d / "D" / "meta.json").write_text('{"vocab_size": 50, "dtype": ')


def _odd_sized_shard(d: Path) -> None:
    _empty_val_folder(d)
    write_tokens(d / "D" / "val_000000.bin", np.arange(300) % 50)
    (d / "D" / "train_000001.bin").write_bytes(b"\x01\x02\x03")  # 1.5 uint16 tokens


def _grpo_files(d: Path) -> None:
    """A GRPO run folder: its metrics and a checkpoint (content irrelevant for the refusal)."""
    (d / "grpo").mkdir()
    (d / "grpo" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (d / "grpo" / "ckpt_000002.pt").write_bytes(b"not read")


TOK = CharTokenizer(CHARS)


def _grpo(d: Path) -> GRPOTrainer:
    """A tiny GRPO trainer writing to d/grpo (as in tests/test_rl.py)."""
    torch.manual_seed(0)
    model = Transformer(
        preset("gpt2-tiny", vocab_size=12, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
    )
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(10, 40)]
    task = RLTask(train=rows, test=rows[:4], instruction="",
                  reward_funcs=[lambda prompts, completions, **_: [c.count("7") / 3 for c in completions]])  # fmt: skip
    cfg = GRPOConfig(chat=False, num_generations=2, prompts_per_step=2, micro_batch_size=4,
                     max_new_tokens=3, train=grpo_train_config(max_steps=2, out_dir=str(d / "grpo")))  # fmt: skip
    tr = GRPOTrainer(model, TOK, cfg, task)
    tr.stop_ids = [11]
    return tr


def _grpo_run(d: Path) -> None:
    tr = _grpo(d)
    tr.fit(progress=False)
    tr.save()


def _grpo_run_damaged(d: Path) -> None:
    _grpo_run(d)
    (d / "grpo" / "ckpt_000002.pt").write_bytes(b"")


def _write(name: str, data: bytes):
    def setup(d: Path) -> None:
        (d / name).write_bytes(data)

    return setup


def _prepare(name: str, **kw):
    return lambda d: prepare([d / name], d / "out", tokenizer="bytes", **kw)


def _prepare_missing(d: Path) -> None:
    try:
        prepare([d / "missing.txt"], d / "out", tokenizer="bytes")
    finally:
        assert not (d / "out").exists(), "a failed prepare left an --out folder behind"


def _foreign_out(d: Path) -> None:
    (d / "a.txt").write_text("".join(f"paragraph {i}\n\n" for i in range(200)))
    (d / "out").mkdir()
    (d / "out" / "notes.txt").write_text("my notes\n")


JSONL = b'{"text": "one"}\n{"text": "two"}\n{"body": "three"}\n'
LATIN1 = "first line\nsecond\ncaf\u00e9 au lait\n".encode("latin-1")


# ---------------------------------------------------------------------- the table
def cli(id: str, match: str, argv: list[str], setup=None) -> BadInput:
    return BadInput(id, match, argv=argv, setup=setup)


RESUME = ["train", "{d}/cfg.toml", "--out_dir={d}/run", "--resume"]
CASES = [
    cli(
        "train-resume-changed-lr",
        r"settings differ from the checkpoint's \(lr 0\.003 -> 0\.01\)"
        r".*--allow-change lr",
        [*RESUME, "--lr=0.01"],
        _trained,
    ),
    cli(
        "train-resume-changed-batch-size",
        r"\(batch_size 8 -> 4\).*--allow-change batch_size",
        [*RESUME, "--batch_size=4"],
        _trained,
    ),
    cli("train-resume-changed-seed", r"\(seed 7 -> 8\)", [*RESUME, "--seed=8"], _trained),
    cli(
        "train-resume-changed-data",
        r"\(data_options \{.*'seq_len': 8\} -> \{.*'seq_len': 9\}\)",
        [*RESUME, "--data.seq_len=9"],
        _trained,
    ),
    cli(
        "train-resume-changed-lr-and-steps",
        r"\(max_steps 2 -> 5, lr 0\.003 -> 0\.01\).*"
        r"--allow-change max_steps,lr",
        [*RESUME, "--lr=0.01", "--max_steps=5"],
        _trained,
    ),
    cli(
        "train-resume-allow-change-typo",
        r"unknown config key 'lrr'; did you mean 'lr'",
        [*RESUME, "--allow-change", "lrr", "--lr=0.01"],
        _trained,
    ),
    cli(
        "train-resume-no-checkpoint",
        r"no checkpoint in .*typo; check --out_dir, or drop --resume",
        ["train", "{d}/cfg.toml", "--out_dir={d}/typo", "--resume"],
        _trained,
    ),
    cli(
        "train-resume-all-checkpoints-damaged",
        r"no usable checkpoint in .*run: ckpt_000002\.pt is "
        r"truncated.*; ckpt_000001\.pt is empty\. Restore a good copy",
        RESUME,
        _trained_then_damaged,
    ),
    cli(
        "train-rerun-without-resume",
        r"run holds checkpoints of an earlier run; pass --resume",
        ["train", "{d}/cfg.toml", "--out_dir={d}/run"],
        _trained,
    ),
    cli(
        "train-nan-loss",
        r"loss became non-finite \(nan/inf\) at step \d+.*lower lr",
        ["train", "{d}/cfg.toml", "--out_dir={d}/nan", "--lr=1e9", "--min_lr=0"],
        _config,
    ),
    cli(
        "train-data-empty-val-split",
        r"the val split of .*D is empty.*prepare it again",
        ["train", "{d}/cfg.toml", "--data={d}/D", "--out_dir={d}/r"],
        _empty_val_folder,
    ),
    cli(
        "train-data-damaged-meta",
        r"D/meta\.json is not valid JSON .*prepare the folder again",
        ["train", "{d}/cfg.toml", "--data={d}/D", "--out_dir={d}/r"],
        _damaged_meta,
    ),
    cli(
        "train-data-truncated-shard",
        r"train_000001\.bin has 3 bytes, not a whole number of uint16 tokens",
        ["train", "{d}/cfg.toml", "--data={d}/D", "--out_dir={d}/r"],
        _odd_sized_shard,
    ),
    cli(
        "grpo-cli-rerun-into-run-folder",
        r"grpo already holds a GRPO run.*continue it with --resume",
        ["rl", "grpo", "defaults", "--train.out_dir={d}/grpo"],
        _grpo_files,
    ),
    cli(
        "grpo-cli-resume-no-checkpoint",
        r"no GRPO checkpoint in .*none; check out_dir",
        ["rl", "grpo", "defaults", "--train.out_dir={d}/none", "--resume"],
    ),
    BadInput(
        "grpo-api-rerun-into-run-folder",
        r"already holds a GRPO run",
        call=lambda d: _grpo(d).fit(progress=False),
        setup=_grpo_run,
    ),
    BadInput(
        "grpo-api-resume-damaged",
        r"no usable checkpoint in .*grpo: ckpt_000002\.pt is "
        r"empty",
        call=lambda d: _grpo(d).load(),
        setup=_grpo_run_damaged,
    ),
    BadInput(
        "prepare-binary-file",
        r"bin\.txt is not utf-8 text \(byte 0x[0-9a-f]{2} at offset "
        r"\d+, line \d+\); convert it to UTF-8 or pass --encoding latin-1",
        call=_prepare("bin.txt"),
        setup=_write("bin.txt", bytes(range(128, 256)) * 4),
    ),
    BadInput(
        "prepare-latin1-file",
        r"latin\.txt is not utf-8 text \(byte 0xe9 at offset 21, "
        r"line 3\)",
        call=_prepare("latin.txt"),
        setup=_write("latin.txt", LATIN1),
    ),
    BadInput(
        "prepare-nul-bytes-as-latin1",
        r"nul\.txt looks binary, not text \(NUL character on "
        r"line 2\)",
        call=_prepare("nul.txt", encoding="latin-1"),
        setup=_write("nul.txt", b"text\n\x00\x01\x02\n"),
    ),
    BadInput(
        "prepare-jsonl-without-text",
        r'docs\.jsonl:3 has no "text" field \(keys body\)',
        call=_prepare("docs.jsonl"),
        setup=_write("docs.jsonl", JSONL),
    ),
    BadInput(
        "prepare-jsonl-bad-json",
        r"docs\.jsonl:2 is not valid JSON",
        call=_prepare("docs.jsonl"),
        setup=_write("docs.jsonl", b'{"text": "a"}\n{"text": "b\n'),
    ),
    BadInput(
        "prepare-missing-input", r"input .*missing\.txt does not exist", call=_prepare_missing
    ),
    BadInput(
        "prepare-empty-val-split",
        r"val split would be empty: none of the 3 documents .* "
        r"raise --val-fraction",
        call=_prepare("small.txt"),
        setup=_write("small.txt", b"one\n\ntwo\n\nthree\n"),
    ),
    BadInput(
        "prepare-empty-train-split",
        r"train split would be empty.*lower --val-fraction",
        call=_prepare("small.txt", val_fraction=1.0),
        setup=_write("small.txt", b"one\n\ntwo\n"),
    ),
    BadInput(
        "prepare-into-foreign-folder",
        r"out holds other files; use a new --out folder, or "
        r"pass --overwrite",
        call=_prepare("a.txt", val_fraction=0.5),
        setup=_foreign_out,
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case: BadInput, tmp_path) -> None:
    check_bad_input(case, tmp_path)


def test_table_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 12


def test_grpo_resume_after_refusal_continues(tmp_path) -> None:
    """The refused rerun's way out works: load() then fit() continues the same run's metrics."""
    _grpo_run(tmp_path)
    tr = _grpo(tmp_path)
    tr.load()
    tr.fit(3, progress=False)
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]
