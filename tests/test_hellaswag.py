"""HellaSwag: acc / acc_norm / acc_norm_tokens equal a direct computation on a written jsonl, the
`lmlab eval hellaswag` CLI, the hub download path and its one-line offline error, and
`eval_hellaswag_every` logging into a tiny `lmlab train` run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmlab import checkpoints as ckpt
from lmlab.cli import main
from lmlab.config import Config, ConfigError
from lmlab.data.prepare import prepare
from lmlab.eval import read_hellaswag, score_choices
from lmlab.eval.hellaswag import hellaswag_path, pick_validation_files
from lmlab.model import Transformer
from lmlab.tokenizers import BPETokenizer
from lmlab.train import TrainConfig

# made-up items in the official formats: `ctx` alone, or ctx_a/ctx_b + activity_label, WikiHow tags
RECORDS = [
    {"ind": 0, "activity_label": "Baking", "ctx_a": "A baker kneads the dough on a floured table.",
     "ctx_b": "she", "ctx": "A baker kneads the dough on a floured table. she", "label": 2,
     "endings": ["folds it.", "paints the dough bright blue and mails it to the moon overnight.",
                 "shapes it into a round loaf and sets it aside to rise.", "sings."]},
    {"ind": 1, "ctx": "The boy kicks the red ball across the grass. It",
     "endings": ["rolls into the pond near the old fence.", "melts.",
                 "rolls.", "starts reading a long newspaper about the weather in town."],
     "label": "0"},
    {"ind": 2, "activity_label": "Home", "ctx_a": "[header] How to clean a window [title] Spray the "
     "glass.", "ctx_b": "then", "ctx": "", "label": 3,
     "endings": ["eat the sponge [substeps] slowly.", "wipe.", "the window flies away quietly.",
                 "wipe the glass with a dry cloth from top to bottom."]},
    {"ind": 3, "ctx": "Two dogs run along the beach at sunset. They", "label": 1,
     "endings": ["bark at the waves and chase each other in circles.", "chase gulls.",
                 "open an umbrella and order tea with lemon.", "fly."]},
    {"ind": 4, "activity_label": "Music", "ctx_a": "A man tunes his guitar on stage.",
     "ctx_b": "he", "ctx": "A man tunes his guitar on stage. he", "label": 0,
     "endings": ["strums a chord and begins to play a slow song.", "eats the guitar.",
                 "plays.", "turns into a small cloud and drifts over the crowd."]},
    {"ind": 5, "ctx": "A woman pours hot water into a teapot. She", "label": 3,
     "endings": ["waits.", "plants the teapot in the garden under a tree.", "drinks the pot.",
                 "lets the tea steep for a few minutes before pouring a cup."]},
]  # fmt: skip
# the prompts lm-evaluation-harness builds from them (activity label, capitalized ctx_b, tags removed)
PROMPTS = [
    "Baking: A baker kneads the dough on a floured table. She",
    "The boy kicks the red ball across the grass. It",
    "Home: How to clean a window. Spray the glass. Then",
    "Two dogs run along the beach at sunset. They",
    "Music: A man tunes his guitar on stage. He",
    "A woman pours hot water into a teapot. She",
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tiny_model(vocab_size: int, seed: int = 0) -> Transformer:
    """A 1-layer random GPT with larger-than-default weights: peaked, item-specific preferences."""
    cfg = TrainConfig(model="gpt2-tiny", model_overrides=dict(d_model=32, n_layers=1, n_heads=2))
    torch.manual_seed(seed)
    model = Transformer(cfg.model_config(vocab_size, 128))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    text = " ".join(PROMPTS + [e for r in RECORDS for e in r["endings"]])
    return BPETokenizer.train(text * 3, 320, progress=False)


@torch.no_grad()
def direct(model, tok, records) -> tuple[dict[str, float], list[list[float]]]:
    """One plain forward per context + " " + ending; the three argmax rules computed here."""
    hits = {"acc": 0, "acc_norm": 0, "acc_norm_tokens": 0}
    lls = []
    for prompt, r in zip(PROMPTS, records, strict=False):
        ctx = tok.encode(prompt, add_special=True)
        ll, per_char, per_tok = [], [], []
        for ending in r["endings"]:
            ending = ending.replace(" [substeps]", "")
            cont = tok.encode(" " + ending)
            logp = model(torch.tensor([ctx + cont])).float().log_softmax(-1)[0]
            s = sum(logp[len(ctx) + k - 1, t].item() for k, t in enumerate(cont))
            ll.append(s)
            per_char.append(s / len(ending))
            per_tok.append(s / len(cont))
        label = int(r["label"])
        for key, scores in (("acc", ll), ("acc_norm", per_char), ("acc_norm_tokens", per_tok)):
            hits[key] += scores.index(max(scores)) == label
        lls.append(ll)
    return {k: v / len(records) for k, v in hits.items()}, lls


def test_reads_the_official_formats(tmp_path):
    items = read_hellaswag(write_jsonl(tmp_path / "h.jsonl", RECORDS))
    assert [it.context for it in items] == PROMPTS
    assert items[2].endings[0] == "eat the sponge slowly." and [it.label for it in items] == [
        2,
        0,
        3,
        1,
        0,
        3,
    ]


def test_scores_equal_a_direct_computation(tmp_path, tok):
    model = tiny_model(tok.vocab_size)
    items = read_hellaswag(write_jsonl(tmp_path / "h.jsonl", RECORDS))
    r = score_choices(model, tok, items, batch_size=3, progress=False)  # padded batches of 3
    want, lls = direct(model, tok, RECORDS)
    assert torch.allclose(
        torch.tensor([d["loglik"] for d in r.items]), torch.tensor(lls), atol=1e-4
    )
    assert {"acc": r.acc, "acc_norm": r.acc_norm, "acc_norm_tokens": r.acc_norm_tokens} == want
    # the three rules disagree on these items, so each one is really checked
    assert len({want["acc"], want["acc_norm"], want["acc_norm_tokens"]}) == 3, want


def test_cli_prints_the_accuracies(tmp_path, tok, capsys):
    from lmlab.weights.checkpoint import save_checkpoint

    model = tiny_model(tok.vocab_size)
    save_checkpoint(model, tmp_path / "ckpt", tokenizer=tok)
    data = write_jsonl(tmp_path / "h.jsonl", RECORDS)
    out = tmp_path / "r.json"
    args = ["eval", "--model", str(tmp_path / "ckpt"), "--json", str(out), "hellaswag"]
    assert main([*args, "--data", str(data), "--limit", "4"]) == 0
    printed = capsys.readouterr().out
    want, _ = direct(model, tok, RECORDS[:4])
    assert f"acc {want['acc']:.4f}  acc_norm {want['acc_norm']:.4f}" in printed
    assert f"acc_norm_tokens {want['acc_norm_tokens']:.4f}  over 4 items" in printed
    assert json.loads(out.read_text())["n"] == 4


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_without_data_offline_is_one_line(tmp_path, tok, capsys, monkeypatch):
    from lmlab.weights.checkpoint import save_checkpoint

    save_checkpoint(tiny_model(tok.vocab_size), tmp_path / "ckpt", tokenizer=tok)
    monkeypatch.setenv("LMLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "hellaswag"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "needs the network" in line and "--data PATH" in line and "HF_HUB_OFFLINE" in line
    # online but the hub cannot be reached: the same kind of line
    import huggingface_hub as hh

    def unreachable(*a, **k):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hh.HfApi, "list_repo_files", unreachable)
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "hellaswag", "--limit", "2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "needs the network" in line and "ConnectionError" in line and "--data PATH" in line


def test_download_converts_the_hub_parquet_once(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import huggingface_hub as hh
    import pyarrow.parquet as pq

    rows = [{**r, "label": str(r["label"]), "ctx": r["ctx"] or "x"} for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "val.parquet")
    files = ["README.md", "data/train-00000-of-00001.parquet",
             "data/validation-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"]  # fmt: skip
    calls = []
    monkeypatch.setattr(hh.HfApi, "list_repo_files", lambda self, *a, **k: files)
    monkeypatch.setattr(
        hh, "hf_hub_download", lambda *a, **k: calls.append(a) or str(tmp_path / "val.parquet")
    )
    monkeypatch.setenv("LMLAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    path = hellaswag_path()
    assert path == tmp_path / "data" / "hellaswag_val.jsonl"
    assert calls == [("Rowan/hellaswag", "data/validation-00000-of-00001.parquet")]
    assert [it.context for it in read_hellaswag(path)] == PROMPTS
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cached now: no network needed
    assert hellaswag_path() == path and len(calls) == 1
    assert pick_validation_files(
        ["default/validation/0000.parquet", "default/train/0000.parquet"]
    ) == ["default/validation/0000.parquet"]


def test_training_logs_hellaswag_every_n_steps(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text(
        "\n\n".join(PROMPTS[i % 6] + " " + RECORDS[i % 6]["endings"][0] for i in range(300))
    )
    prepare([text], tmp_path / "tokens", tokenizer="bytes", val_fraction=0.2)
    long_item = {**RECORDS[1], "endings": ["x" * 200, *RECORDS[1]["endings"][1:]]}  # > block_size
    data = write_jsonl(tmp_path / "h.jsonl", [*RECORDS, long_item])
    out = tmp_path / "run"
    assert main(["train", "defaults", f"--data={tmp_path / 'tokens'}", "--model.d_model=32",
                 "--model.n_layers=1", "--model.n_heads=2", "--block_size=128", "--batch_size=4",
                 "--max_steps=5", "--eval_interval=0", "--eval_iters=1", "--eval_hellaswag_every=2",
                 f"--hellaswag_data={data}", "--hellaswag_limit=7", "--tensorboard=false",
                 "--progress=false", "--threads=1", f"--out_dir={out}"]) == 0  # fmt: skip
    assert "1 of 7 items skipped" in capsys.readouterr().out
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    hs = [r for r in recs if "hellaswag_acc" in r]
    assert [r["step"] for r in hs] == [2, 4, 5]  # every 2 steps and at the end
    assert "val_loss" in hs[-1] and "val_loss" not in hs[0]  # the final evaluation shares a record
    # the logged numbers are those of the model at that step: the final checkpoint, scored here
    state = ckpt.load(ckpt.latest(out))
    model = Transformer(Config.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])

    class Bytes:
        def encode(self, text: str, add_special: bool = False) -> list[int]:
            return [256] * add_special + list(text.encode())

    r = score_choices(model, Bytes(), read_hellaswag(data, limit=6), progress=False)
    assert (hs[-1]["hellaswag_acc"], hs[-1]["hellaswag_acc_norm"]) == (r.acc, r.acc_norm)
    assert hs[-1]["hellaswag_acc_norm_tokens"] == r.acc_norm_tokens


def test_training_option_errors(tmp_path, capsys):
    assert main(["train", "defaults", "--eval_hellaswag_every=-1"]) == 2
    assert "eval_hellaswag_every=-1 must be >= 0" in one_error_line(capsys.readouterr().err)
    # a data source without a meta.json tokenizer (shakespeare-char, tasks) needs hellaswag_tokenizer
    cfg = TrainConfig(eval_hellaswag_every=5, hellaswag_data=str(tmp_path / "none.jsonl"))
    from lmlab.train.hellaswag import data_tokenizer

    with pytest.raises(ConfigError, match="set hellaswag_tokenizer"):
        data_tokenizer(cfg, object())
