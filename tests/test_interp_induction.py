"""A 2-layer attention-only model trained on the induction task grows an induction head the
detector finds (score >= 0.9); random-init models have none above 0.2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.data.tasks.induction import induction_batch
from lmlab.families import preset
from lmlab.interp import heads
from lmlab.model import Transformer


def attention_only(cfg_name: str = "llama-tiny") -> Transformer:
    """2 layers, 4 heads, RoPE; the MLPs are zeroed and frozen (Config has no attn_only knob)."""
    torch.manual_seed(0)
    cfg = preset(
        cfg_name,
        vocab_size=64,
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        n_layers=2,
        max_seq_len=64,
        d_ff=64,
    )
    m = Transformer(cfg)
    for blk in m.blocks:
        for p in blk.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)
    return m


@pytest.mark.slow
def test_trained_attention_only_model_has_an_induction_head():
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = attention_only()
        opt = torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0
        )
        g = torch.Generator().manual_seed(1)
        best = 0.0
        for step in range(1500):
            # the repeat distance varies, so copying from a fixed offset cannot solve the task
            n = int(torch.randint(6, 25, (1,), generator=g))
            x = induction_batch(32, n, 64, g, bos=0)
            loss = F.cross_entropy(m(x)[:, n + 1 : -1].reshape(-1, 64), x[:, n + 2 :].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 99:
                best = float(heads.head_scores(m.eval(), "induction", n=20, batch=16).max())
                m.train()
                if best >= 0.93:
                    break
        m.eval()
        scores = heads.head_scores(m, "induction", n=20, batch=16, seed=5)
        found = heads.detect_heads(m, "induction", threshold=0.9, n=20, batch=16, seed=5)
        assert scores.max() >= 0.9, scores
        assert found and found[0].layer == 1  # composition needs the previous-token head of layer 0
        prev = heads.head_scores(m, "previous_token", n=20, batch=16, seed=5)
        assert prev[0].max() > 0.5  # ... which the detector also finds
    finally:
        torch.set_num_threads(n_threads)


def test_random_init_attention_only_model_has_no_induction_head():
    m = attention_only().eval()
    for kind in heads.KINDS:
        assert heads.head_scores(m, kind, n=20, batch=16).max() < 0.2
