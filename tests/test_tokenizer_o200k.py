"""The o200k_harmony tokenizer (gpt-oss) on a small rank file the test writes in the real format,
checked against tiktoken's own definition of the encoding; the offline error; the gpt-oss-588m
data-prep hint."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken

import lmlab.data.prepare as prep
import lmlab.tokenizers.o200k as o2
from lmlab.recipes.gpt_oss_588m import prepare_hint
from lmlab.tokenizers import TokenizerError, load_tokenizer
from lmlab.tokenizers.o200k import HarmonyTokenizer, harmony_special_tokens, o200k_harmony

# 256 single bytes (ranks 0..255), then a few merges so BPE has work to do.
MERGES = [b"he", b"ll", b"llo", b"hello", b" w", b"or", b" wor", b"ld", b" world", b"12", b"123"]
RANKS = {bytes([i]): i for i in range(256)} | {m: 256 + k for k, m in enumerate(MERGES)}
TEXTS = [
    "hello world",
    "Hello World's 12345 numbers\n\n  spaced\ttabs",
    "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
    "ünïcødé ✓ 日本語 😀",
]


def _rank_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "o200k_base.tiktoken"
    p.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in RANKS.items()))
    return p


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No rank file anywhere lmlab looks, and no network (a download attempt fails the test)."""
    for var, sub in (
        ("LMLAB_DATA", "data"),
        ("LMLAB_CACHE", "cache"),
        ("TIKTOKEN_CACHE_DIR", "tk"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    prep.resolve_tokenizer.cache_clear()
    yield tmp_path
    prep.resolve_tokenizer.cache_clear()


def _tiktoken_reference(monkeypatch) -> dict:
    """tiktoken's own o200k_harmony constructor, fed our small ranks instead of the download."""
    import tiktoken_ext.openai_public as op

    if not hasattr(op, "o200k_harmony"):
        pytest.skip(f"tiktoken {tiktoken.__version__} predates o200k_harmony (0.11)")
    monkeypatch.setattr(op, "load_tiktoken_bpe", lambda *a, **k: dict(RANKS))
    return op.o200k_harmony()


def test_special_tokens_and_pattern_match_tiktokens_definition(tmp_path, monkeypatch):
    ref = _tiktoken_reference(monkeypatch)
    ours = harmony_special_tokens()
    # tiktoken names 200018 twice (<|endofprompt|> and <|reserved_200018|>); we keep one name.
    assert ours == {k: v for k, v in ref["special_tokens"].items() if k != "<|reserved_200018|>"}
    assert o2.O200K_PATTERN == ref["pat_str"]
    tok = o200k_harmony(_rank_file(tmp_path))
    named = {"<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002,
             "<|constrain|>": 200003, "<|channel|>": 200005, "<|start|>": 200006,
             "<|end|>": 200007, "<|message|>": 200008, "<|call|>": 200012,
             "<|reserved_200000|>": 200000, "<|reserved_201087|>": 201087}  # fmt: skip
    for text, i in named.items():
        assert tok.encode(text) == [i]
        assert tok.id_to_bytes(i) == text.encode()
    assert tok.vocab_size == 201088 and len(ours) == 201088 - 199998
    assert (tok.bos_id, tok.eos_id) == (199998, 199999)


def test_encode_matches_tiktoken_and_round_trips(tmp_path, monkeypatch):
    ref = tiktoken.Encoding(**_tiktoken_reference(monkeypatch))
    tok = o200k_harmony(_rank_file(tmp_path))
    assert tok.encode("hello world") == [
        256 + MERGES.index(b"hello"),
        256 + MERGES.index(b" world"),
    ]
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, allowed_special="all")
        assert tok.decode(ids) == text
    assert tok.encode_batch(TEXTS, add_special=True)[0][0] == 199998
    assert tok.decode(tok.encode(TEXTS[2]), skip_special=True) == "userhiassistantfinalok"
    with pytest.raises(TokenizerError, match="token id 5000 is outside"):
        tok.decode([5000])  # between the small rank table and the specials: not a token


def test_save_and_load_by_folder_file_and_name(isolated):
    path = _rank_file(isolated / "data")
    tok = load_tokenizer("o200k_harmony")  # found in $LMLAB_DATA
    assert isinstance(tok, HarmonyTokenizer) and tok.ranks_path == path
    assert isinstance(load_tokenizer(path), HarmonyTokenizer)
    folder = tok.save(isolated / "saved")
    again = load_tokenizer(folder)
    assert isinstance(again, HarmonyTokenizer)
    assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_missing_rank_file_offline_is_one_clear_error(isolated, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError) as e:
        load_tokenizer("o200k_harmony")
    msg = str(e.value)
    assert "\n" not in msg
    assert "needs o200k_base.tiktoken" in msg and "downloading is off" in msg
    assert str(isolated / "data") in msg and "--tokenizer gpt2" in msg
    with pytest.raises(TokenizerError, match=r"o200k rank file .*nope.tiktoken not found"):
        o200k_harmony(isolated / "nope.tiktoken")


def test_found_in_tiktoken_cache_and_download_checks_sha256(isolated, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LMLAB_OFFLINE", raising=False)
    data = _rank_file(isolated / "src").read_bytes()

    class Resp:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return data

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Resp())
    with pytest.raises(
        TokenizerError, match=r"downloaded o200k_base\.tiktoken has the wrong SHA-256"
    ):
        o200k_harmony()
    monkeypatch.setattr(o2, "RANKS_SHA256", hashlib.sha256(data).hexdigest())
    tok = o200k_harmony()
    assert tok.ranks_path == isolated / "cache" / "o200k_base.tiktoken"
    (isolated / "cache" / "o200k_base.tiktoken").unlink()
    cached = isolated / "tk" / hashlib.sha1(o2.RANKS_URL.encode()).hexdigest()
    cached.write_bytes(data)  # where tiktoken itself caches the download
    assert o200k_harmony(download=False).ranks_path == cached


def test_rank_file_reaching_the_special_ids_is_refused(tmp_path):
    p = tmp_path / "o200k_base.tiktoken"
    p.write_text(f"{base64.b64encode(b'a').decode()} 0\n{base64.b64encode(b'b').decode()} 199998\n")
    with pytest.raises(
        TokenizerError, match=r"has rank 199998, but o200k_harmony's special tokens"
    ):
        HarmonyTokenizer(p)


def test_prepare_with_o200k_writes_uint32_with_endoftext_between_documents(isolated):
    _rank_file(isolated / "data")
    src = isolated / "c.jsonl"
    docs = ["hello world", "hello <|call|> again", "123 numbers"] + [f"doc {i}" for i in range(9)]
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prep.prepare([src], isolated / "out", tokenizer="o200k_harmony", val_fraction=0.5)
    meta = json.loads((isolated / "out" / "meta.json").read_text())
    assert (meta["vocab_size"], meta["dtype"]) == (201088, "uint32")
    tok = load_tokenizer("o200k_harmony")
    ids = [
        np.fromfile(isolated / "out" / f"{s}_000000.bin", np.uint32).tolist()
        for s in ("train", "val")
    ]
    got = sorted(t for part in ids for t in tok.decode(part).split("<|endoftext|>") if t)
    assert got == sorted(docs)
    assert all(part[0] == 199999 for part in ids if part)


def _run_hint(hint: str, tmp_path: Path) -> dict:
    """Run the hint's command (`python -m lmlab.data.prepare ...`) on a tiny corpus."""
    argv = shlex.split(hint.split(";")[0])
    assert argv[:3] == ["python", "-m", "lmlab.data.prepare"]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": f"hello world {i}"}) + "\n" for i in range(40)))
    argv = [str(src) if a == "corpus/*.jsonl" else a for a in argv[3:]]
    assert prep.main([*argv, "--workers", "1", "--val-fraction", "0.3"]) == 0
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "meta.json").read_text())


def test_gpt_oss_hint_works_offline_with_gpt2_and_with_o200k_when_present(
    shared_data, isolated, monkeypatch
):
    gpt2 = shared_data / "gpt2.tiktoken"
    if not gpt2.is_file():
        pytest.skip(f"{gpt2} not found")
    shutil.copyfile(gpt2, isolated / "data" / "gpt2.tiktoken")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hint = prepare_hint(str(isolated / "fw_gpt2"))
    assert "--tokenizer gpt2;" in hint and "o200k_base.tiktoken" in hint
    meta = _run_hint(hint, isolated)
    assert (meta["tokenizer"], meta["vocab_size"]) == ("gpt2", 50257)

    _rank_file(isolated / "data")
    prep.resolve_tokenizer.cache_clear()
    hint = prepare_hint(str(isolated / "fw_o200k"))
    assert hint.endswith("--tokenizer o200k_harmony")
    meta = _run_hint(hint, isolated)
    assert (meta["tokenizer"], meta["vocab_size"]) == ("o200k_harmony", 201088)


def test_gpt_oss_recipe_error_names_the_working_hint(isolated, monkeypatch):
    """Without its token folder the recipe's one-line error carries `prepare_hint`'s command."""
    from lmlab.config import ConfigError
    from lmlab.recipes import gpt_oss_588m

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = gpt_oss_588m.Config(require_gpu=False)
    cfg.train.data = str(isolated / "absent")
    with pytest.raises(ConfigError) as e:
        gpt_oss_588m.run(cfg, None)  # fails before the run folder is used
    assert prepare_hint(cfg.train.data) in str(e.value) and "\n" not in str(e.value)
    assert "--tokenizer gpt2;" in str(e.value)
