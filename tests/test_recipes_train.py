"""Training recipes run end to end (tiny settings here; the full CPU defaults are measured in the report)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lmlab import recipes
from lmlab.config import ConfigError
from lmlab.data.tokens import write_meta, write_tokens
from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.runs import RunDir
from lmlab.settings import from_toml
from tests.conftest import data_file
from tests.run_events import assert_run_events


def _run(name: str, tmp_path, *overrides: str) -> tuple[dict, RunDir]:
    """Run recipe `name` with `--key=value` settings, built as `lmlab run` builds them."""
    mod = recipes.get(name)
    out = RunDir.create(name, tmp_path)
    metrics = mod.run(from_toml(mod.Config, None, list(overrides)), out)
    assert_run_events(out.path)
    return metrics, out


BLOCK = 32  # block_size of the tiny GPU-recipe runs below


def word_text(n_bytes: int = 18000, seed: int = 0) -> bytes:
    """Random sentences over 14 words: learnable spelling, never-repeating word order."""
    rng = random.Random(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat",
             "sat", "on", "mat"]  # fmt: skip
    sentences = (
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 8))) + "." for _ in range(3000)
    )
    return " ".join(sentences).encode()[:n_bytes]


@pytest.fixture
def token_folder(tmp_path):
    """Byte shards: the first 90% of the text for training, the last 10% held out as val."""
    folder = tmp_path / "tokens"
    write_meta(folder, 257, "uint16", tokenizer="bytes")
    text = np.frombuffer(word_text(), dtype=np.uint8)
    cut = len(text) * 9 // 10
    write_tokens(folder / "train_000000.bin", text[:cut], "uint16")
    write_tokens(folder / "val_000000.bin", text[cut:], "uint16")
    return folder


def test_token_folder_val_is_disjoint_from_train(token_folder):
    train = np.fromfile(token_folder / "train_000000.bin", dtype=np.uint16).astype(np.uint8)
    val = np.fromfile(token_folder / "val_000000.bin", dtype=np.uint16).astype(np.uint8)
    assert len(val) >= 1000 and len(train) >= 9 * len(val) - 9
    train_bytes, val_bytes = train.tobytes(), val.tobytes()
    assert train_bytes + val_bytes == word_text()  # a split of the text: no position in both
    # no training example (block_size + 1 tokens: inputs and targets) reappears in val
    seen = {train_bytes[i : i + BLOCK + 1] for i in range(len(train_bytes) - BLOCK)}
    assert not any(val_bytes[i : i + BLOCK + 1] in seen for i in range(len(val_bytes) - BLOCK))


@pytest.mark.slow
def test_addition_defaults_reach_99_percent(tmp_path, capsys):
    metrics, out = _run("addition", tmp_path)
    assert metrics["test_exact_match"] >= 0.99
    assert "✓" in capsys.readouterr().out
    assert (out.path / "loss.png").stat().st_size > 1000 and "exact match" in out.file(
        "report.md"
    ).read_text()


def test_addition_short_run_learns_two_digit_sums(tmp_path):
    """300 steps on 2-digit sums: 70.0% exact match on 200 held-out pairs (seeds 1, 2: 61.5%,
    88.0%); chance is about 0.1% (three answer digits)."""
    metrics, out = _run("addition", tmp_path, "--digits=2", "--train.max_steps=300",
                        "--train.eval_interval=300", "--n_test=200", "--train.lr=1e-2",
                        "--train.min_lr=1e-3", "--train.warmup_steps=20", "--target=2.0")  # fmt: skip
    assert metrics["test_exact_match"] >= 0.5 and metrics["steps"] == 300
    assert len(metrics["samples"]) == 8 and "exact match" in out.file("report.md").read_text()


def test_shakespeare_char_tiny(shared_data, tmp_path, monkeypatch, capsys):
    data_file(shared_data, "tinyshakespeare.txt")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    metrics, out = _run(
        "shakespeare-char",
        tmp_path,
        "--train.model_overrides.d_model=32",
        "--train.model_overrides.n_layers=1",
        "--train.model_overrides.n_heads=2",
        "--train.block_size=32",
        "--train.batch_size=16",
        "--train.max_steps=200",
        "--train.eval_interval=100",
        "--train.eval_iters=4",
        "--train.warmup_steps=10",
        "--train.threads=1",
        "--sample_chars=40",
    )
    assert metrics["val_loss"] < 2.8  # ln(65) = 4.17 at chance
    assert "sample:" in capsys.readouterr().out and (out.path / "loss.png").is_file()


def test_pretrain_then_finetune_tiny(shared_data, tmp_path, monkeypatch):
    data_file(shared_data, "tinyshakespeare.txt")
    data_file(shared_data, "sms_spam_collection.tsv")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    metrics, out = _run(
        "pretrain-then-finetune",
        tmp_path,
        "--train.model_overrides.d_model=32",
        "--train.model_overrides.n_layers=1",
        "--train.model_overrides.n_heads=2",
        "--train.block_size=32",
        "--train.batch_size=16",
        "--train.max_steps=120",
        "--train.warmup_steps=12",
        "--finetune_max_steps=20",
        "--train.eval_interval=10",
        "--train.eval_iters=4",
        "--train.threads=1",
    )
    assert metrics["finetuned_val_loss"] < metrics["scratch_val_loss"]
    assert "| step | finetuned | from scratch |" in out.file("report.md").read_text()


def test_ablations_tiny_every_variant_learns_and_differs(shared_data, tmp_path, monkeypatch):
    """All six variants, equal steps and data: each learns, and each switch changes the run.

    Measured here (60 steps, seed 1337): baseline 3.279, MQA 3.252, SwiGLU 3.232, RoPE 3.112,
    QuickGELU 3.280, residual scale 3.287 (uniform: ln 65 = 4.17); QuickGELU is the closest to
    the baseline, 1.2e-3 apart.
    """
    data_file(shared_data, "tinyshakespeare.txt")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    results, out = _run(
        "ablations",
        tmp_path,
        "--train.model_overrides.d_model=32",
        "--train.model_overrides.n_layers=1",
        "--train.model_overrides.n_heads=2",
        "--train.block_size=16",
        "--train.batch_size=8",
        "--train.max_steps=60",
        "--train.warmup_steps=6",
        "--train.eval_interval=60",
        "--train.eval_iters=4",
        "--train.threads=1",
    )
    base = results.pop("baseline (GPT-2)")
    assert set(results) == {"MQA (1 kv head)", "SwiGLU (param-matched)", "RoPE", "QuickGELU",
                            "residual scale 1/sqrt(2L)"}  # fmt: skip
    losses = {n: r["val_loss"] for n, r in results.items()}
    assert base["val_loss"] < math.log(65) - 0.7, base  # learned well below the uniform loss
    for name, loss in losses.items():
        assert loss < math.log(65) - 0.7, (name, loss)
        assert abs(loss - base["val_loss"]) < 0.4, (name, loss, base)  # no variant is broken
        assert abs(loss - base["val_loss"]) > 1e-4, (name, loss, base)  # the switch had an effect
    assert results["MQA (1 kv head)"]["params"] < base["params"]
    assert results["RoPE"]["params"] < base["params"]  # no position table
    assert abs(results["SwiGLU (param-matched)"]["params"] / base["params"] - 1) < 0.01
    assert all(r["tok_s"] > 0 for r in results.values())
    assert "| variant | val loss | params | tokens/s |" in out.file("report.md").read_text()


def test_gpu_recipes_refuse_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for name in ("gpt2-124m", "gpt-oss-588m"):
        with pytest.raises(ConfigError, match=r"GPU recipe.*--require_gpu=false"):
            _run(name, tmp_path)


def test_gpu_recipe_configs_build():
    with torch.device("meta"):
        oss = Transformer(preset("gpt-oss-588m"))
        gpt2 = Transformer(recipes.get("gpt2-124m").Config().train.model_config())
    assert abs(sum(p.numel() for p in oss.parameters()) - 588e6) / 588e6 < 0.01
    assert abs(sum(p.numel() for p in gpt2.parameters()) - 124.5e6) / 124e6 < 0.01


@pytest.mark.parametrize(
    ("name", "model"), [("gpt-oss-588m", "gpt-oss-tiny"), ("gpt2-124m", "gpt2-tiny")]
)
def test_gpu_recipe_tiny_variant_on_cpu(name, model, tmp_path, token_folder, one_thread):
    """40 steps on held-out word text; measured val loss: gpt-oss-tiny 0.75, gpt2-tiny 1.34."""
    metrics, out = _run(
        name,
        tmp_path,
        f"--train.model={model}",
        "--require_gpu=false",
        f"--train.data={token_folder}",
        "--train.device=cpu",
        "--train.compile=false",
        "--train.dtype=float32",
        f"--train.block_size={BLOCK}",
        "--train.batch_size=8",
        "--train.grad_accum=2",
        "--train.max_steps=40",
        "--train.warmup_steps=4",
        "--train.lr=3e-3",
        "--train.min_lr=3e-4",
        "--train.eval_interval=20",
        "--train.eval_iters=2",
        "--train.log_interval=5",
        "--train.checkpoint_interval=20",
        "--train.model_overrides.vocab_size=257",  # the byte shards' vocabulary, not GPT-2's
    )
    assert metrics["steps"] == 40 and metrics["val_loss"] < 2.0  # ln(257) = 5.55 at chance
    assert (out.path / "train" / "ckpt_000040.pt").is_file() and list(
        (out.path / "train" / "tb").iterdir()
    )
