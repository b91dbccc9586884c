"""Data pipeline: token memmaps, text preparation, the resumable corpus preparer, synthetic tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmlab.config import ConfigError
from lmlab.data.prepare import prepare, split_text
from lmlab.data.sources import make_data
from lmlab.data.tasks import AdditionTask, InductionTask, MaxSortTask, TrigramTask, induction_batch
from lmlab.data.text import prepare_text
from lmlab.data.tokens import TokenData, TokenDataError, token_dtype, write_meta, write_tokens
from lmlab.errors import OverwriteError
from lmlab.tokenizers import CharTokenizer, TokenizerError
from tests.bad_inputs import REPO
from tests.conftest import data_file


def _folder(tmp_path, n=1000, vocab=50, dtype="uint16"):
    write_meta(tmp_path, vocab, dtype)
    write_tokens(tmp_path / "train.bin", np.arange(n) % vocab, dtype)
    write_tokens(tmp_path / "val.bin", np.arange(n // 10) % vocab, dtype)
    return tmp_path


def test_token_batches_are_shifted_windows(tmp_path):
    data = TokenData(_folder(tmp_path), block_size=16)
    x, y = data.get_batch("train", 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x[:, 0:1] + torch.arange(16)) % 50, x)  # contiguous runs of the arange data
    x2, _ = data.get_batch("train", 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)  # batches depend only on the generator


def test_sharded_token_folder(tmp_path):
    write_meta(tmp_path, 300, "uint16")
    for i in range(3):
        write_tokens(tmp_path / f"train_{i:06d}.bin", np.full(100, 100 * i), "uint16")
    write_tokens(tmp_path / "val_000000.bin", np.zeros(50), "uint16")
    data = TokenData(tmp_path, block_size=8)
    assert data.num_tokens("train") == 300
    x, _ = data.get_batch("train", 64, torch.Generator().manual_seed(1))
    assert set(x[:, 0].tolist()) == {
        0,
        100,
        200,
    }  # every shard is sampled; windows stay inside a shard


def test_dataset_shorter_than_block_is_a_clear_error(tmp_path):
    _folder(tmp_path, n=100)
    with pytest.raises(
        TokenDataError, match=r"shorter than one block.*val.bin has 10 tokens.*block_size=32"
    ):
        TokenData(tmp_path, block_size=32)


def test_vocab_larger_than_token_dtype(tmp_path):
    with pytest.raises(
        TokenDataError, match=r"vocab_size=70000 is larger than uint16.*dtype=uint32"
    ):
        write_meta(tmp_path, 70000, "uint16")
    with pytest.raises(TokenDataError, match=r"token id 70000 does not fit uint16"):
        write_tokens(tmp_path / "train.bin", [1, 70000], "uint16")
    assert token_dtype(50257) == np.uint16 and token_dtype(200_000) == np.uint32
    (tmp_path / "meta.json").write_text('{"vocab_size": 100000, "dtype": "uint16"}')
    with pytest.raises(TokenDataError, match="re-prepare with dtype=uint32"):
        TokenData(tmp_path, 8)


def test_prepare_text_char_level(tmp_path):
    text = "hello world, " * 100
    vocab = CharTokenizer.from_text(text)
    prepare_text(text, vocab, tmp_path, val_fraction=0.1, tokenizer_name="char")
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    assert len(train) + len(val) == len(text) and len(val) == 130
    assert vocab.decode(train.tolist()) + vocab.decode(val.tolist()) == text
    with pytest.raises(TokenizerError, match="not in this"):
        vocab.encode("hello!")


def test_corpus_preparer_parallel_and_resumable(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    inputs = []
    for i in range(4):
        p = docs / f"part{i}.jsonl"
        p.write_text(
            "".join(
                json.dumps({"text": f"document {i}-{j}: " + "abc " * j}) + "\n" for j in range(30)
            )
        )
        inputs.append(p)
    full = prepare(inputs, tmp_path / "full", tokenizer="bytes", workers=2, val_fraction=0.2)
    assert full["processed"] == 4 and full["tokens"] > 0
    # An interrupted run: two files finished (listed in done.txt), the rest is redone on resume.
    part = tmp_path / "part"
    first = prepare(inputs, part, tokenizer="bytes", workers=1, val_fraction=0.2)
    (part / "done.txt").write_text("".join(str(p) + "\n" for p in inputs[:2]))
    for i in (2, 3):
        for split in ("train", "val"):
            (part / f"{split}_{i:06d}.bin").unlink()
    again = prepare(inputs, part, tokenizer="bytes", workers=2, val_fraction=0.2)
    assert again["processed"] == 2 and first["tokens"] == full["tokens"]
    for f in sorted((tmp_path / "full").glob("*.bin")):
        assert (part / f.name).read_bytes() == f.read_bytes()
    data = TokenData(part, block_size=16)
    assert data.num_tokens("val") > 0 and data.vocab_size == 257
    with pytest.raises(
        OverwriteError, match=r"prepared with other settings \(inputs .*--overwrite"
    ):
        prepare(inputs[:1], part, tokenizer="bytes")
    again = prepare(inputs[:1], part, tokenizer="bytes", val_fraction=0.2, overwrite=True)
    assert again["processed"] == 1 and sorted(p.name for p in part.glob("*.bin")) == [
        "train_000000.bin", "val_000000.bin"
    ]  # fmt: skip


def test_addition_task_format_and_held_out():
    task = AdditionTask(digits=3, n_test=2000, seed=1)
    g = torch.Generator().manual_seed(0)
    x, y = task.get_batch("train", 512, g)
    assert x.shape == (512, 11)
    seq = torch.cat([x, y[:, -1:]], 1)
    a = seq[:, 0] * 100 + seq[:, 1] * 10 + seq[:, 2]
    b = seq[:, 4] * 100 + seq[:, 5] * 10 + seq[:, 6]
    ans = (seq[:, 8:] * torch.tensor([1, 10, 100, 1000])).sum(1)  # reversed digits
    assert torch.equal(ans, a + b)
    assert (y[:, :7] == -100).all() and (y[:, 7:] >= 0).all()  # loss only on the answer
    test_keys = set((task.test[0] * 1000 + task.test[1]).tolist())
    seen = set()
    for _ in range(20):
        tx, _ = task.get_batch("train", 4096, g)
        seen |= set(
            (
                tx[:, 0] * 100000
                + tx[:, 1] * 10000
                + tx[:, 2] * 1000
                + tx[:, 4] * 100
                + tx[:, 5] * 10
                + tx[:, 6]
            ).tolist()
        )
    assert len(test_keys) == 2000 and not (seen & test_keys)


def test_addition_exact_match_of_an_oracle():
    task = AdditionTask(digits=2, n_test=50, n_val=50)

    class Oracle(torch.nn.Module):  # predicts the right next digit from the prompt
        def forward(self, seq):
            a = seq[:, 0] * 10 + seq[:, 1]
            b = seq[:, 3] * 10 + seq[:, 4]
            k = seq.shape[1] - task.prompt_len
            logits = torch.zeros(seq.shape[0], seq.shape[1], 12)
            logits[torch.arange(seq.shape[0]), -1, ((a + b) // 10**k) % 10] = 1
            return logits

    oracle = Oracle()
    oracle.p = torch.nn.Parameter(torch.zeros(1))
    assert task.exact_match(oracle) == 1.0
    assert task.samples(oracle, 2)[0].endswith("✓")


def test_induction_maxsort_trigram():
    g = torch.Generator().manual_seed(0)
    toks = induction_batch(4, 10, 50, g, bos=0)
    assert (
        toks.shape == (4, 21)
        and (toks[:, 0] == 0).all()
        and torch.equal(toks[:, 1:11], toks[:, 11:])
    )
    x, y = InductionTask(vocab_size=50, seq_len=10).get_batch("train", 4, g)
    assert x.shape == (4, 20) and (y[:, :10] == -100).all() and torch.equal(y[:, 10:], x[:, 1:11])
    task = MaxSortTask(kind="sort", length=5, max_value=20)
    x, y = task.get_batch("train", 8, g)
    assert torch.equal(y[:, 5:], x[:, :5].sort(1).values)
    x, y = MaxSortTask(kind="max", length=5).get_batch("train", 8, g)
    assert torch.equal(y[:, -1], x[:, :5].max(1).values)
    tri = TrigramTask(vocab_size=16, block_size=32, branching=2, seed=3)
    x, y = tri.get_batch("train", 8, g)
    assert x.shape == (8, 32) and 0 < tri.entropy() <= np.log(2) + 1e-6
    assert (
        tri.probs[x[:, :-1], x[:, 1:]].gather(-1, y[:, 1:, None]) > 0
    ).all()  # only allowed successors


def test_make_data_errors():
    with pytest.raises(ConfigError, match="task:addition"):
        make_data("task:additon", 8)
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        make_data("task:addition", 8, {"digit": 2})
    with pytest.raises(ConfigError, match="neither a prepared token folder"):
        make_data("/nonexistent/folder", 8)


def test_tinyshakespeare_local(shared_data, tmp_path, monkeypatch):
    data_file(shared_data, "tinyshakespeare.txt")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    src = make_data("shakespeare-char", 64)
    assert src.vocab_size == 65 and src.data.num_tokens("train") > 900_000
    x, _ = src.data.get_batch("val", 2, torch.Generator().manual_seed(0))
    assert isinstance(src.decode(x[0].tolist()), str)


def test_corpus_preparer_with_gpt2_tokenizer(shared_data, tmp_path):
    data_file(shared_data, "gpt2.tiktoken")
    src = tmp_path / "a.txt"
    paragraphs = [f"Hello world {i}.\nSecond line.\n\n" for i in range(40)]
    src.write_text("".join(paragraphs))
    prepare([src], tmp_path / "out", tokenizer="gpt2", workers=1, val_fraction=0.3)
    from lmlab.tokenizers import gpt2_tiktoken

    tok = gpt2_tiktoken()
    docs = []
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "out" / f"{split}_000000.bin", dtype=np.uint16).tolist()
        assert ids[0] == tok.eos_id == 50256
        docs += tok.decode(ids[1:]).split("<|endoftext|>")
    assert sorted(docs) == sorted(paragraphs)  # every paragraph is one document, nothing lost


def test_txt_is_split_into_paragraphs_or_chunks():
    text = "one\ntwo\n\n  \nthree\n\n\n" + "x" * 30 + "\n" + "y" * 30 + "\n\n"
    docs = list(split_text(text, chunk=40))
    assert docs == ["one\ntwo\n\n  \n", "three\n\n\n", "x" * 30 + "\n", "y" * 30 + "\n\n"]
    assert "".join(docs) == text
    no_blank = "".join(f"line {i}\n" for i in range(100))  # no blank line: line-aligned chunks
    chunks = list(split_text(no_blank, chunk=64))
    assert "".join(chunks) == no_blank and all(len(c) <= 64 and c.endswith("\n") for c in chunks)
    assert list(split_text("z" * 100, chunk=40)) == ["z" * 40, "z" * 40, "z" * 20]


def test_prepare_cli_error_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "lmlab.data.prepare", str(tmp_path / "nope.txt"),
         "--out", str(tmp_path / "out"), "--tokenizer", "bytes"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: input {tmp_path / 'nope.txt'} does not exist; "
                                             "check the path (nothing was written)"]  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_readme_corpus_command_trains(shared_data, tmp_path):
    """README: 3 .txt parts of TinyShakespeare -> prepare (gpt2) -> `lmlab train defaults
    --data=D --max_steps=3` works (each part is split into paragraphs, so val gets data)."""
    data_file(shared_data, "gpt2.tiktoken")
    text = data_file(shared_data, "tinyshakespeare.txt").read_text()
    (tmp_path / "corpus").mkdir()
    third = len(text) // 3
    for i in range(3):
        (tmp_path / "corpus" / f"p{i:02d}.txt").write_text(text[i * third : (i + 1) * third])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    inputs = [f"corpus/p{i:02d}.txt" for i in range(3)]
    prep = [
        sys.executable,
        "-m",
        "lmlab.data.prepare",
        *inputs,
        "--out",
        "D",
        "--tokenizer",
        "gpt2",
    ]
    r = subprocess.run(prep, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for i in range(3):  # every part has data in both splits
        assert (tmp_path / "D" / f"val_{i:06d}.bin").stat().st_size > 0
    train = [sys.executable, "-m", "lmlab", "train", "defaults", "--data=D", "--max_steps=3",
             "--batch_size=4", "--block_size=64", "--eval_iters=1", "--model.d_model=64",
             "--model.n_layers=1", "--model.n_heads=2", "--threads=2", "--tensorboard=false",
             "--progress=false", "--out_dir=run"]  # fmt: skip
    r = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 3: val loss" in r.stdout and (tmp_path / "run" / "ckpt_000003.pt").is_file()
