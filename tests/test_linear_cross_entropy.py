"""The chunked LM-head cross-entropy equals logits + F.cross_entropy: loss and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.families import preset
from lmlab.linear_cross_entropy import linear_cross_entropy
from lmlab.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_rows", [7, 100, None])
def test_equals_plain_cross_entropy(reduction, chunk_rows):
    torch.manual_seed(0)
    h = torch.randn(3, 33, 24, requires_grad=True)
    w = torch.randn(101, 24, requires_grad=True)
    b = torch.randn(101, requires_grad=True)
    t = torch.randint(0, 101, (3, 33))
    t[0, :5] = -100  # ignored positions: no loss, no gradient
    ours = linear_cross_entropy(h, w, t, b, reduction=reduction, chunk_rows=chunk_rows)
    ref = F.cross_entropy((h @ w.T + b).flatten(0, 1), t.flatten(), reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    g_ours = torch.autograd.grad(ours * 1.7, (h, w, b))  # an upstream gradient != 1
    g_ref = torch.autograd.grad(ref * 1.7, (h, w, b))
    for a, c in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    assert g_ours[0][0, :5].abs().max() == 0


def test_low_precision_and_bad_input():
    h, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", torch.bfloat16):  # plain path, float32 logits
        ours = linear_cross_entropy(h, w, t)
        ref = F.cross_entropy(F.linear(h, w).float(), t)
    torch.testing.assert_close(ours, ref)
    with pytest.raises(ValueError, match="one class id per hidden row"):
        linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        linear_cross_entropy(h, w, t, reduction="none")


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "gemma3-tiny"])
def test_model_targets_equal_logits_loss(name):
    """`model(tokens, targets=...)` gives the loss and gradients of its logits' cross-entropy."""
    torch.manual_seed(0)
    model = Transformer(preset(name))
    x = torch.randint(0, model.cfg.vocab_size, (2, 12))
    y = torch.roll(x, -1, 1)
    y[:, -1] = -100
    losses, grads = [], []
    for fused in (True, False):
        model.zero_grad()
        if fused:
            loss = model(x, targets=y)
        else:
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        model(x, targets=y[:, :5])


def test_hooked_head_takes_the_plain_path():
    """LoRA on the LM head is a forward hook: the loss goes through the module so it trains."""
    from lmlab.peft import apply_lora

    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny"))
    apply_lora(model, r=4, target_modules=["unembed"])
    head = model.unembed
    torch.nn.init.normal_(head.lora_B.weight)
    x = torch.randint(0, model.cfg.vocab_size, (2, 8))
    model(x, targets=x).backward()
    assert head.lora_A.weight.grad is not None and head.lora_A.weight.grad.abs().sum() > 0


def test_no_gradient_work_when_evaluating(monkeypatch):
    """Under no_grad only the loss is computed: one matmul per chunk, not three."""
    h, w = torch.randn(20, 8), torch.randn(30, 8, requires_grad=True)
    t = torch.randint(0, 30, (20,))
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append(1) or mm(*a, **k))
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, t, chunk_rows=5)
    assert len(calls) == 4  # 4 chunks x logits only
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.detach().T, t))
