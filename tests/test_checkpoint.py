"""lmlab checkpoints: save -> load is bit-identical for every family and dtype, tokenizers ride
along, writes are atomic (a failed save leaves the previous checkpoint untouched) and never
touch files they did not write."""

from __future__ import annotations

import json

import pytest
import torch

import lmlab
from lmlab.errors import OverwriteError
from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.tokenizers import CharTokenizer, TokenizerError
from lmlab.weights import checkpoint
from lmlab.weights.checkpoint import is_checkpoint, save_checkpoint
from lmlab.weights.errors import WeightsError


def _random(name: str, dtype: torch.dtype = torch.float32) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(preset(name)).to(dtype)
    with torch.no_grad():  # norms, biases and sinks too, so nothing is left at a constant
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("gpt2-tiny", torch.float32),
        ("llama-tiny", torch.float32),
        ("gemma3-tiny", torch.bfloat16),
        ("gpt-oss-tiny", torch.float32),
        ("bert-tiny", torch.float16),
    ],
)
def test_save_load_is_bit_identical(tmp_path, name: str, dtype: torch.dtype) -> None:
    model = _random(name, dtype)
    save_checkpoint(model, tmp_path / "ckpt")
    assert is_checkpoint(tmp_path / "ckpt")
    loaded, tok = lmlab.load(tmp_path / "ckpt")
    assert tok is None and loaded.cfg == model.cfg
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert theirs[k].dtype == dtype and torch.equal(ours[k], theirs[k]), k
    if model.cfg.tie_embeddings and model.cfg.lm_head:
        assert loaded.unembed.weight is loaded.embed.weight
    if dtype == torch.float32:  # (.to(bf16) also rounds the RoPE buffers; loading keeps them fp32)
        tokens = torch.randint(0, model.cfg.vocab_size, (2, 12))
        with torch.no_grad():
            assert torch.equal(model.eval()(tokens), loaded(tokens))


def test_tokenizer_is_saved_and_restored(tmp_path) -> None:
    tok = CharTokenizer.from_text("hello world, lmlab!")
    model = _random("llama-tiny")
    save_checkpoint(model, tmp_path / "ckpt", tok)
    _, tok2 = lmlab.load(tmp_path / "ckpt")
    assert tok2 is not None and tok2.encode("hello lmlab") == tok.encode("hello lmlab")


def test_vocab_mismatch_is_an_error(tmp_path) -> None:
    tok = CharTokenizer([chr(0x100 + i) for i in range(600)])  # 600 ids > 512 embedding rows
    save_checkpoint(_random("llama-tiny"), tmp_path / "ckpt", tok)
    with pytest.raises(TokenizerError, match=r"vocab mismatch.*600 ids.*vocab_size=512"):
        lmlab.load(tmp_path / "ckpt")


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch) -> None:
    first = _random("gpt2-tiny")
    save_checkpoint(first, tmp_path / "ckpt")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_random("llama-tiny"), tmp_path / "ckpt", overwrite=True)
    monkeypatch.undo()
    loaded, _ = lmlab.load(tmp_path / "ckpt")
    assert loaded.cfg.name == "gpt2-tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left behind
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_refuses_to_overwrite_other_folders(tmp_path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(
        OverwriteError, match=r"notes is not empty \(1 entry: todo.txt\).*--overwrite"
    ):
        save_checkpoint(_random("gpt2-tiny"), tmp_path / "notes")
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    save_checkpoint(_random("gpt2-tiny"), tmp_path / "notes", overwrite=True)  # beside, not instead
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert lmlab.load(tmp_path / "notes")[0].cfg.name == "gpt2-tiny"
    with pytest.raises(OverwriteError, match="not empty"):  # its own earlier save is not empty
        save_checkpoint(_random("gpt2-tiny"), tmp_path / "notes")


def test_bad_checkpoint_config(tmp_path) -> None:
    save_checkpoint(_random("gpt2-tiny"), tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    cfg["d_modle"] = cfg.pop("d_model")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"unknown config key 'd_modle'; did you mean 'd_model'"):
        lmlab.load(tmp_path / "ckpt")
