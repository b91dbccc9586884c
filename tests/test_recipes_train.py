"""Training recipes run end to end (tiny settings here; the full CPU defaults are measured in the report)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab import recipes
from lmlab.config import ConfigError, preset
from lmlab.data.tokens import write_meta, write_tokens
from lmlab.model import Transformer
from lmlab.runs import RunDir
from tests.conftest import data_file


def _run(name: str, tmp_path, **kw) -> tuple[dict, RunDir]:
    mod = recipes.get(name)
    out = RunDir.create(name, tmp_path)
    return mod.run(mod.Config(**kw), out), out


@pytest.fixture
def token_folder(tmp_path):
    folder = tmp_path / "tokens"
    write_meta(folder, 257, "uint16", tokenizer="bytes")
    text = np.frombuffer(
        ("the quick brown fox jumps over the lazy dog. " * 400).encode(), dtype=np.uint8
    )
    write_tokens(folder / "train_000000.bin", text, "uint16")
    write_tokens(folder / "val_000000.bin", text[7:2007], "uint16")
    return folder


@pytest.mark.slow
def test_addition_defaults_reach_99_percent(tmp_path, capsys):
    metrics, out = _run("addition", tmp_path)
    assert metrics["test_exact_match"] >= 0.99
    assert "✓" in capsys.readouterr().out
    assert (out.path / "loss.png").stat().st_size > 1000 and "exact match" in out.file(
        "report.md"
    ).read_text()


def test_addition_short_run_writes_report(tmp_path):
    metrics, out = _run("addition", tmp_path, max_steps=30, eval_interval=15, n_test=100)
    assert 0.0 <= metrics["test_exact_match"] <= 1.0 and metrics["steps"] == 30
    assert len(metrics["samples"]) == 8 and out.file("report.md").is_file()


def test_shakespeare_char_tiny(shared_data, tmp_path, monkeypatch, capsys):
    data_file(shared_data, "tinyshakespeare.txt")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    metrics, out = _run(
        "shakespeare-char",
        tmp_path,
        d_model=32,
        n_layers=1,
        n_heads=2,
        block_size=32,
        batch_size=16,
        max_steps=200,
        eval_interval=100,
        eval_iters=4,
        warmup_steps=10,
        threads=1,
        sample_chars=40,
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
        d_model=32,
        n_layers=1,
        n_heads=2,
        block_size=32,
        batch_size=16,
        pretrain_steps=120,
        finetune_steps=20,
        eval_interval=10,
        eval_iters=4,
        threads=1,
    )
    assert metrics["finetuned_val_loss"] < metrics["scratch_val_loss"]
    assert "| step | finetuned | from scratch |" in out.file("report.md").read_text()


def test_ablations_tiny(shared_data, tmp_path, monkeypatch):
    data_file(shared_data, "tinyshakespeare.txt")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    results, out = _run(
        "ablations",
        tmp_path,
        d_model=32,
        n_layers=1,
        n_heads=2,
        block_size=16,
        batch_size=8,
        steps=6,
        eval_interval=6,
        eval_iters=2,
        only="baseline,MQA,RoPE",
        threads=1,
    )
    assert set(results) == {"baseline (GPT-2)", "MQA (1 kv head)", "RoPE"}
    assert results["MQA (1 kv head)"]["params"] < results["baseline (GPT-2)"]["params"]
    assert results["RoPE"]["params"] < results["baseline (GPT-2)"]["params"]  # no position table
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
        gpt2 = Transformer(preset("gpt2", vocab_size=recipes.get("gpt2-124m").Config().vocab_size))
    assert abs(sum(p.numel() for p in oss.parameters()) - 588e6) / 588e6 < 0.01
    assert abs(sum(p.numel() for p in gpt2.parameters()) - 124.5e6) / 124e6 < 0.01


@pytest.mark.parametrize(
    ("name", "model"), [("gpt-oss-588m", "gpt-oss-tiny"), ("gpt2-124m", "gpt2-tiny")]
)
def test_gpu_recipe_tiny_variant_on_cpu(name, model, tmp_path, token_folder):
    metrics, out = _run(
        name,
        tmp_path,
        model=model,
        require_gpu=False,
        data=str(token_folder),
        device="cpu",
        compile=False,
        dtype="float32",
        block_size=32,
        batch_size=8,
        grad_accum=2,
        max_steps=40,
        warmup_steps=4,
        lr=3e-3,
        min_lr=3e-4,
        eval_interval=20,
        eval_iters=2,
        log_interval=5,
        checkpoint_interval=20,
        vocab_size=0,
    )
    assert metrics["steps"] == 40 and metrics["val_loss"] < 2.0  # ln(257) = 5.55 at chance
    assert (out.path / "train" / "ckpt_000040.pt").is_file() and list(
        (out.path / "train" / "tb").iterdir()
    )
