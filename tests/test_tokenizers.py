"""Tokenizers behind one interface: tiktoken GPT-2, chars, tokenizer.json (MiniLM), GGUF vocabularies
(SmolLM2 byte-level BPE, Gemma 3 SentencePiece) against transformers, chat templates, bad input."""

from __future__ import annotations

import pytest
from conftest import data_file

from lmlab.families import preset
from lmlab.packaged import packaged_path
from lmlab.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    TokenizerError,
    check_vocab,
    gguf_metadata,
    gguf_tokenizer,
    gpt2_tiktoken,
    load_tokenizer,
    render_chat_template,
)

MIXED = (
    "Hello world! Prices: 12345 and 3.14159, année 2024, naïve café, Ærøskøbing, 東京, Привет.\n"
    "def f(x):\n\treturn {'a': x**2}  # 😀🚀👍🏽\n\n   indented   spaces\r\nend"
)
SMOL_CHAT = "<|im_start|>user\nWhat is 2+2? Ça va? 🤔<|im_end|>\n<|im_start|>assistant\n4<|im_end|>"
GEMMA_CHAT = (
    "<start_of_turn>user\nWhat is 2+2? Ça va? 🤔<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there! 😀"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Merci, ça marche."},
    ],
]


def _packaged(name: str):
    p = packaged_path(name)
    if p is None:
        pytest.skip(f"packaged model {name} not installed")
    return p


def _hf_gguf_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# ------------------------------------------------------------------ GPT-2 / chars


@pytest.fixture(scope="module")
def gpt2(shared_data):
    return gpt2_tiktoken(data_file(shared_data, "gpt2.tiktoken"))


def test_gpt2_tiktoken_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>") == [50256]
    assert gpt2.encode("hi", add_special=True) == [50256, 5303]
    assert gpt2.vocab_size == 50257 and gpt2.bos_id == gpt2.eos_id == 50256 and gpt2.pad_id is None
    assert gpt2.decode(gpt2.encode(MIXED)) == MIXED
    assert gpt2.id_to_token(995) == "·world"
    assert gpt2.encode_batch(["Hello world", "hi"]) == [[15496, 995], [5303]]


def test_gpt2_missing_file_names_it(tmp_path):
    with pytest.raises(TokenizerError, match=r"nope\.tiktoken not found.*gpt2\.tiktoken"):
        gpt2_tiktoken(tmp_path / "nope.tiktoken")


def test_gpt2_save_load(gpt2, tmp_path):
    back = load_tokenizer(gpt2.save(tmp_path / "tok"))
    assert back.encode(MIXED) == gpt2.encode(MIXED)


def test_char_tokenizer(tmp_path):
    tok = CharTokenizer.from_text("hello world", special_tokens=["<|endoftext|>"])
    assert tok.vocab_size == 9 and tok.eos_id == 8
    ids = tok.encode("hello<|endoftext|>world")
    assert ids[5] == 8 and tok.decode(ids) == "hello<|endoftext|>world"
    assert tok.decode(ids, skip_special=True) == "helloworld"
    back = load_tokenizer(tok.save(tmp_path / "chars"))
    assert isinstance(back, CharTokenizer) and back.encode("low") == tok.encode("low")
    with pytest.raises(TokenizerError, match=r"'z' \(U\+007A\) at position 1"):
        tok.encode("oz")
    assert CharTokenizer.from_text("ab", unk="a").encode("zb") == [0, 1]


# ------------------------------------------------------------------ tokenizer.json (MiniLM, WordPiece)


def test_minilm_tokenizer_json_parity(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RawTokenizer

    folder = _packaged("minilm-l6")
    ours = load_tokenizer(folder)
    assert isinstance(ours, HFTokenizer)
    raw = RawTokenizer.from_file(str(folder / "tokenizer.json"))
    raw.no_padding()
    raw.no_truncation()
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    texts = [MIXED, "The cat sat on the mat.", "unaffable 12345 ##tokens [SEP] inside"]
    for text in texts:
        ids = ours.encode(text, add_special=True)
        assert ids == raw.encode(text).ids == ref(text)["input_ids"]
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (101, 102, 0)  # [CLS], [SEP], [PAD]
    assert ours.vocab_size == 30522
    long = "word " * 600  # longer than the file's 128-token truncation: every token comes back
    assert len(ours.encode(long)) == 600
    back = load_tokenizer(ours.save(tmp_path / "minilm"))
    assert back.encode(MIXED, add_special=True) == ours.encode(MIXED, add_special=True)
    assert (back.bos_id, back.eos_id, back.pad_id) == (101, 102, 0)


# ------------------------------------------------------------------ GGUF vocabularies


@pytest.fixture(scope="module")
def smol_path():
    return _packaged("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smol(smol_path):
    return gguf_tokenizer(smol_path)


@pytest.fixture(scope="module")
def smol_ref(smol_path):
    return _hf_gguf_tokenizer(smol_path)


def test_gguf_metadata_matches_gguf_reader(smol_path):
    gguf = pytest.importorskip("gguf")
    meta = gguf_metadata(smol_path)
    reader = gguf.GGUFReader(smol_path)
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.add_bos_token",
        "general.architecture",
        "llama.block_count",
    ):
        assert meta[key] == reader.fields[key].contents(), key
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert meta[key] == reader.fields[key].contents(), key
    assert len(meta["tokenizer.ggml.tokens"]) == 49152


def test_smollm2_gguf_ids_equal_transformers(smol, smol_ref, shared_data):
    for text in (MIXED, SMOL_CHAT, MIXED + SMOL_CHAT):
        ours = smol.encode(text, add_special=True)
        assert ours == smol_ref(text)["input_ids"], text
        assert smol.decode(ours) == text
    assert smol.encode(SMOL_CHAT)[:2] == [1, 4093]  # <|im_start|>, "user"
    assert (smol.bos_id, smol.eos_id, smol.pad_id) == (1, 2, 2)
    assert smol.vocab_size == len(smol_ref) == 49152
    shakespeare = data_file(shared_data, "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    assert smol.encode(shakespeare) == smol_ref(shakespeare)["input_ids"]
    assert smol.id_to_token(smol.encode(" world")[0]) == "·world"


def test_smollm2_chat_template_equals_transformers(smol, smol_ref):
    assert smol.chat_template == smol_ref.chat_template
    for messages in CONVERSATIONS:
        for gen in (True, False):
            ref = smol_ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert (
                smol.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == ref
            )


@pytest.mark.slow  # transformers' GGUF tokenizer for Gemma's 262k vocabulary takes ~60 s here
def test_gemma3_gguf_ids_equal_transformers():
    path = _packaged("gemma3-270m")
    ours = gguf_tokenizer(path)
    ref = _hf_gguf_tokenizer(path)
    for text in (
        MIXED,
        GEMMA_CHAT,
        "  leading spaces\n\n\nand <unused3> tokens\t\t",
        MIXED + GEMMA_CHAT,
    ):
        ids = ours.encode(text, add_special=True)
        assert ids == ref(text)["input_ids"], text
        assert ids[0] == 2  # Gemma adds <bos>
        assert ours.decode(ids, skip_special=True) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ours.encode(MIXED)) == MIXED
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (2, 1, 0)
    assert ours.vocab_size == 262144
    # This GGUF stores no tokenizer.chat_template, so neither side has one to compare.
    assert ours.chat_template is None and ref.chat_template is None


# ------------------------------------------------------------------ chat templates


def test_chat_template_sandbox_and_errors():
    tpl = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "{% if loop.index > 2 %}{% break %}{% endif %}{{ bos_token }}{{ m['content'] | tojson }}\n{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    msgs = [{"role": "user", "content": "é"}] * 3
    assert render_chat_template(tpl, msgs, bos_token="<s>") == '<s>"é"\n<s>"é"\n'
    assert render_chat_template(tpl, msgs, add_generation_prompt=True).endswith('"é"\n>')
    with pytest.raises(TokenizerError, match="no tools"):
        render_chat_template(tpl, [{"role": "tool", "content": "x"}])
    with pytest.raises(TokenizerError, match="list of dicts"):
        render_chat_template(tpl, "hello")
    with pytest.raises(Exception, match=r"unsafe|access"):
        render_chat_template("{{ messages.__class__.__mro__ }}", [])
    with pytest.raises(TokenizerError, match="no chat template"):
        CharTokenizer.from_text("ab").apply_chat_template(msgs)


# ------------------------------------------------------------------ load_tokenizer / check_vocab


def test_load_tokenizer_sources(smol_path, tmp_path):
    assert load_tokenizer(smol_path).encode("Hi") == load_tokenizer("smollm2-135m-instruct").encode(
        "Hi"
    )
    with pytest.raises(TokenizerError, match=r"unknown tokenizer 'gpt-5'.*gpt2"):
        load_tokenizer("gpt-5")
    with pytest.raises(TokenizerError, match=r"missing\.gguf.*not an existing file"):
        load_tokenizer(tmp_path / "missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer in folder"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TokenizerError, match=r"cannot read a tokenizer from file .*weights\.bin"):
        load_tokenizer(tmp_path / "weights.bin")
    (tmp_path / "empty" / "lmlab_tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(TokenizerError, match="kind 'sentencepiece'"):
        load_tokenizer(tmp_path / "empty")


def test_truncated_or_foreign_gguf(smol_path, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smol_path.read_bytes()[:200_000])
    with pytest.raises(
        TokenizerError, match=r"cut\.gguf ends inside its GGUF metadata.*download it again"
    ):
        load_tokenizer(cut)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(TokenizerError, match="not a GGUF file"):
        load_tokenizer(fake)
    from lmlab.tokenizers import from_gguf_metadata

    with pytest.raises(TokenizerError, match=r"no 'tokenizer\.ggml\.model'"):
        from_gguf_metadata({"general.architecture": "llama"})
    with pytest.raises(TokenizerError, match="'bert' is not supported"):
        from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})


def test_check_vocab(smol):
    check_vocab(smol, preset("smollm2-135m"))  # 49152 == 49152
    with pytest.raises(TokenizerError, match=r"49152 ids but the model \(vocab_size=512\)"):
        check_vocab(smol, preset("llama-tiny"))
    check_vocab(CharTokenizer.from_text("abc"), 512)
    with pytest.raises(TypeError, match="needs a model, a Config or an int"):
        check_vocab(smol, "llama")
