"""Attention sinks in MiniLM (encoder) and SmolLM2 (decoder): per-layer sink share and top sink tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.interp import sinks, viz
from lmlab.interp.models import load_model
from lmlab.paths import data_dir
from lmlab.runs import RunDir
from lmlab.train.logging import log_run

SUMMARY = "attention sinks: share of attention on the first token per layer, top sink tokens (MiniLM, SmolLM2)"


@dataclass
class Config:
    models: tuple[str, ...] = ("minilm-l6", "smollm2-135m-instruct")
    n_texts: int = 40  # SMS messages from the shared data, or Shakespeare lines when absent
    max_len: int = 64
    k: int = 10
    threads: int = 1


def _corpus(n: int) -> list[str]:
    sms = data_dir() / "sms_spam_collection.tsv"
    if sms.is_file():
        lines = [
            ln.split("\t", 1)[1]
            for ln in sms.read_text(encoding="utf-8", errors="replace").splitlines()[:n]
        ]
        return [ln for ln in lines if len(ln) > 20][:n]
    shake = data_dir() / "tinyshakespeare.txt"
    if shake.is_file():
        return [p.replace("\n", " ") for p in shake.read_text().split("\n\n")[:n]]
    return ["The quick brown fox jumps over the lazy dog, and then it rests."] * n


def _ids(tok, text: str, model) -> list[int]:
    if model.cfg.causal:
        return tok.encode(text)
    return tok.encode(text, add_special=True)  # [CLS] ... [SEP]


def run(cfg: Config, out: RunDir) -> dict:
    """For each model: mean share on position 0 per layer over a corpus, and the top sink tokens."""
    torch.set_num_threads(cfg.threads)
    texts = _corpus(cfg.n_texts)
    metrics: dict = {}
    first: dict[str, torch.Tensor] = {}
    lines = ["# Attention sinks", "", f"{len(texts)} texts, up to {cfg.max_len} tokens each.", ""]
    for name in cfg.models:
        model, tok = load_model(name)
        shares = []
        for text in texts:
            ids = _ids(tok, text, model)[: cfg.max_len]
            shares.append(sinks.sink_share(model, torch.tensor([ids])).first_token())
        first[name] = torch.stack(shares).mean(0)
        top = sinks.top_sink_tokens(
            model,
            lambda t, m=model, tk=tok: _ids(tk, t, m),
            lambda i, tk=tok: tk.decode([i]),
            texts,
            k=cfg.k,
            max_len=cfg.max_len,
        )
        top_rest = sinks.top_sink_tokens(
            model,
            lambda t, m=model, tk=tok: _ids(tk, t, m),
            lambda i, tk=tok: tk.decode([i]),
            texts,
            k=cfg.k,
            max_len=cfg.max_len,
            skip_first=True,
        )
        metrics[name] = {
            "first_token_share_by_layer": [round(float(x), 3) for x in first[name]],
            "top_sink_tokens": [(t.token, round(t.mean_received, 4), t.count) for t in top],
            "top_sink_tokens_after_first": [
                (t.token, round(t.mean_received, 4), t.count) for t in top_rest
            ],
        }
        lines += [
            f"## {name}",
            "",
            "Share of attention on position 0 per layer: "
            + ", ".join(f"{float(x):.2f}" for x in first[name]),
            "",
            "| token | mean attention received per visible query | count |",
            "|---|---|---|",
        ]
        lines += [f"| {t.token!r} | {t.mean_received:.3f} | {t.count} |" for t in top]
        lines += [
            "",
            "Excluding position 0:",
            "",
            "| token | mean attention | count |",
            "|---|---|---|",
        ]
        lines += [f"| {t.token!r} | {t.mean_received:.3f} | {t.count} |" for t in top_rest]
        lines.append("")
    viz.plot_sink_share(
        first, out.file("first_token_share.png"), "attention share on the first token per layer"
    )
    lines.append("![](first_token_share.png)")
    out.write_report("\n".join(lines) + "\n")
    log_run(out.path, metrics)
    return metrics
