"""Finetuning on tiny models: data files and splits, metrics, the classifier (padding, cached
frozen blocks, learning a task, with LoRA), SFT masks and learning, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

import lmlab
from lmlab.finetune import (
    ClassifyConfig,
    SequenceClassifier,
    balance,
    classification_report,
    load_labeled,
    plot_confusion,
    split,
    train_classifier,
)
from lmlab.finetune.classify import residual_at
from lmlab.finetune.data import LabeledTexts, drop_duplicates, overlap
from lmlab.finetune.pipeline import DataSpec, prepare_splits, sms_spam_splits
from lmlab.finetune.sft import IGNORE_INDEX, SFTConfig, sft_batch, sft_example, sft_loss, train_sft
from lmlab.peft import apply_lora
from lmlab.tokenizers.char import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_load_csv_tsv_jsonl_and_missing_label_column(tmp_path) -> None:
    (tmp_path / "a.csv").write_text('text,label\n"hi, there",pos\nbad day,neg\n')
    (tmp_path / "b.tsv").write_text('spam\tWIN "cash" now\tor never\nham\tsee you\n')
    (tmp_path / "c.jsonl").write_text(json.dumps({"sentence": "x", "y": "1"}) + "\n")
    a = load_labeled(tmp_path / "a.csv")
    assert a.texts == ["hi, there", "bad day"] and a.labels == [1, 0] and a.names == ["neg", "pos"]
    b = load_labeled(tmp_path / "b.tsv", columns=["label", "text"], label_map={"ham": 0, "spam": 1})
    assert b.texts[0] == 'WIN "cash" now\tor never' and b.labels == [1, 0]
    c = load_labeled(tmp_path / "c.jsonl", text_column="sentence", label_column="y")
    assert c.texts == ["x"] and c.names == ["1"]
    with pytest.raises(ValueError, match=r"column 'label' not found .*\['sentence', 'y'\]"):
        load_labeled(tmp_path / "c.jsonl", text_column="sentence")
    with pytest.raises(ValueError, match="not in label_map"):
        load_labeled(tmp_path / "a.csv", label_map={"pos": 1})


def test_balance_and_split() -> None:
    data = LabeledTexts([str(i) for i in range(100)], [0] * 80 + [1] * 20, ["a", "b"])
    bal = balance(data, seed=0)
    assert bal.counts() == {"a": 20, "b": 20}
    parts = split(bal, (0.7, 0.1, 0.2), seed=0)
    assert [len(p) for p in parts] == [28, 4, 8]
    assert sorted(t for p in parts for t in p.texts) == sorted(bal.texts)
    with pytest.raises(ValueError, match="sum to 1"):
        split(bal, (0.5, 0.2))


def test_drop_duplicates_keeps_first_and_counts() -> None:
    d = LabeledTexts(["a", "b", "a", "c", "b", "a"], [0, 1, 1, 0, 1, 0], ["x", "y"])
    u = drop_duplicates(d)
    assert (u.texts, u.labels, u.duplicates_removed) == (["a", "b", "c"], [0, 1, 0], 3)
    assert u.subset([0, 1]).duplicates_removed == 3  # carried by every part of a split
    assert overlap(d, LabeledTexts(["c", "z", "a"], [0, 0, 0], d.names)) == 2


def test_prepare_splits_drops_duplicates_before_splitting(tmp_path) -> None:
    path = tmp_path / "dup.tsv"
    lines = [f"{'spam' if i % 2 else 'ham'}\tmessage {i % 40}" for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    spec = DataSpec(str(path), columns=["label", "text"], labels=["ham", "spam"], seed=1)
    train, val, test = prepare_splits(spec)
    assert len(train) + len(val) + len(test) == 40
    assert train.duplicates_removed == 160
    assert overlap(train, test) == overlap(train, val) == overlap(val, test) == 0
    spec.dedupe = False  # the old behaviour: copies land on both sides of the split
    train, _, test = prepare_splits(spec)
    assert train.duplicates_removed == 0 and overlap(train, test) > 0


def test_sms_spam_splits_share_no_text(shared_data) -> None:
    from tests.conftest import data_file

    data_file(shared_data, "sms_spam_collection.tsv")
    train, val, test = sms_spam_splits("sms_spam_collection.tsv", 0, 123)
    assert train.duplicates_removed == 403  # 281 distinct texts occur more than once
    assert overlap(train, test) == overlap(train, val) == overlap(val, test) == 0
    assert len(set(train.texts + val.texts + test.texts)) == len(train) + len(val) + len(test)
    assert train.counts()["ham"] == pytest.approx(train.counts()["spam"], abs=25)


def test_metrics_and_confusion_png(tmp_path) -> None:
    rep = classification_report([0, 1, 1, 1, 0], [0, 1, 0, 1, 1], ["ham", "spam"])
    assert rep.accuracy == pytest.approx(0.6) and rep.confusion == [[1, 1], [1, 2]]
    assert rep.precision == pytest.approx([0.5, 2 / 3]) and rep.recall == pytest.approx(
        [0.5, 2 / 3]
    )
    assert plot_confusion(rep, tmp_path / "c.png").stat().st_size > 1000


def test_classifier_padding_and_cached_blocks_match_full_forward() -> None:
    torch.manual_seed(0)
    model = lmlab.Transformer(lmlab.preset("llama-tiny", n_layers=3)).eval()
    clf = SequenceClassifier(model, 3)
    a, b = torch.randint(0, 500, (1, 9)), torch.randint(0, 500, (1, 5))
    tokens = torch.cat([a, torch.cat([b, torch.zeros(1, 4, dtype=torch.long)], 1)])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        both = clf(tokens, mask)
        assert (both[1] - clf(b)[0]).abs().max() <= 1e-5  # a padded row = the row alone
        for start in (1, 2, 3):
            cached = clf.logits_from(residual_at(model, tokens, mask, start), mask, start)
            assert (cached - both).abs().max() <= 1e-5


class Digits:
    """Tokenizer for strings of digits/letters: one id per character."""

    eos_id = 0

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        return [1 + ord(c) % 200 for c in text]


def keyword_task(n: int, seed: int) -> LabeledTexts:
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for i in range(n):
        s = "".join(chr(97 + int(c)) for c in torch.randint(0, 20, (12,), generator=g))
        if i % 2:
            s = s[:5] + "z" + s[6:]  # class 1 contains a 'z' somewhere
        texts.append(s)
        labels.append(int("z" in s))
    return LabeledTexts(texts, labels, ["no", "yes"])


@pytest.mark.parametrize("method", ["blocks", "lora"])
def test_classifier_learns_a_keyword_task(method: str) -> None:
    torch.manual_seed(0)
    small = {"n_layers": 2, "d_model": 128, "n_heads": 4, "n_kv_heads": 2, "d_ff": 344}
    model = lmlab.Transformer(lmlab.preset("llama-tiny", **small))
    clf = SequenceClassifier(model, 2)
    cfg = ClassifyConfig(epochs=6, batch_size=32, lr=3e-3, head_lr=3e-3, train_blocks=1)
    if method == "lora":
        apply_lora(model, r=8, alpha=16, target_modules=["attn.q", "attn.k", "attn.v", "attn.o"])
        cfg.freeze = False
    res = train_classifier(
        clf, Digits(), keyword_task(300, 0), keyword_task(100, 1), keyword_task(200, 2), cfg
    )
    assert res.frozen_layers == (1 if method == "blocks" else 0)
    assert res.test.accuracy >= 0.95, res.history


def test_classifier_bad_input() -> None:
    model = lmlab.Transformer(lmlab.preset("llama-tiny"))
    with pytest.raises(ValueError, match="pool='max'"):
        SequenceClassifier(model, 2, pool="max")
    with pytest.raises(ValueError, match="n_layers=9"):
        SequenceClassifier(model, 2, n_layers=9)


TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }};{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def chat_tokenizer() -> CharTokenizer:
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz0123456789:;?+= ")
    tok.chat_template = TEMPLATE
    return tok


def test_sft_labels_cover_only_the_response() -> None:
    tok = chat_tokenizer()
    ids, labels = sft_example(tok, "2+2?", "4")
    text = tok.decode(ids)
    assert text == "user: 2+2?;assistant: 4;"
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "4;"
    assert labels[: len(ids) - 2] == [IGNORE_INDEX] * (len(ids) - 2)


def test_sft_learns_answers_with_lora() -> None:
    tok = chat_tokenizer()
    pairs = [(f"{a}+{b}?", str(a + b)) for a, b in [(1, 2), (3, 4), (2, 5), (6, 1)]]
    torch.manual_seed(0)
    model = lmlab.Transformer(lmlab.preset("llama-tiny", vocab_size=tok.vocab_size))
    apply_lora(model, r=8, alpha=32, target_modules=["attn.q", "attn.v", "mlp.up", "mlp.down"])
    batch = sft_batch([sft_example(tok, p, r) for p, r in pairs])
    before = sft_loss(model, *batch).item()
    hist = train_sft(model, tok, pairs, SFTConfig(epochs=60, batch_size=4, lr=3e-3))
    after = sft_loss(model, *batch).item()
    # the tiny model's tied, small embeddings cap how sharp its logits get: ask for a 10x drop
    # and every response token (the answer digit and the closing ';') predicted right
    assert before > 2.0 and after < before / 10, (before, hist[-1])
    tokens, mask, labels = batch
    pred = model(tokens, attention_mask=mask)[:, :-1].argmax(-1)
    resp = labels[:, 1:] != IGNORE_INDEX
    assert torch.equal(pred[resp], labels[:, 1:][resp])
