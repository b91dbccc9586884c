"""GRPO math against hand-computed values: advantages, k3 KL, clipping, loss variants, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_paths import PATHS, spy, use_path

from lmlab.families import preset
from lmlab.generate.generate import left_pad
from lmlab.model import Transformer
from lmlab.rl.grpo import (
    aggregate,
    clip_fraction,
    group_advantages,
    k3_kl,
    policy_loss,
    token_logprobs,
)
from lmlab.rl.rollout import rollout

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(vocab: int = 16, seed: int = 0, kind: str = "llama-tiny") -> Transformer:
    torch.manual_seed(seed)
    return Transformer(
        preset(
            kind, vocab_size=vocab, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2
        )
    )


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4, "group")
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    exp = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-4)
    torch.testing.assert_close(adv.values[:4], exp)
    assert torch.equal(adv.values[4:], torch.zeros(4))  # equal rewards: no signal, no 0/0
    assert adv.frac_zero_std == 0.5
    torch.testing.assert_close(
        group_advantages(r, 4, "none").values[:4], torch.tensor([0.5, -0.5, -0.5, 0.5])
    )
    batch_std = float(r.std())
    torch.testing.assert_close(
        group_advantages(r, 4, "batch").values[:4],
        torch.tensor([0.5, -0.5, -0.5, 0.5]) / (batch_std + 1e-4),
    )


def test_k3_kl_hand_computed():
    logp, ref = torch.log(torch.tensor([0.5, 0.3])), torch.log(torch.tensor([0.25, 0.3]))
    kl = k3_kl(logp, ref)
    assert kl[0].item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)  # e^d - d - 1, d = ln 0.5
    assert kl[1].item() == 0.0
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_clipping_hand_computed():
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = policy_loss(logp, old, adv, epsilon=0.2)
    torch.testing.assert_close(loss[:, 0], torch.tensor([-1.2, 1.5, -0.5, 0.8]))
    loss.sum().backward()
    # clipped (ratio 1.5, A>0) and (ratio 0.5, A<0): no gradient; the others: -A * ratio
    torch.testing.assert_close(logp.grad[:, 0], torch.tensor([0.0, 1.5, -0.5, 0.0]))
    assert clip_fraction(logp, old, adv, torch.ones(4, 1)) == 0.5
    # a wider upper band (DAPO's epsilon_high) lets ratio 1.5 through when eps_high = 0.6
    assert policy_loss(logp, old, adv, 0.2, 0.6)[0, 0].item() == pytest.approx(-1.5)


def test_loss_variants_hand_computed():
    per = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per, mask, "grpo").item() == pytest.approx((1.5 + 4.0) / 2)
    assert aggregate(per, mask, "bnpo").item() == pytest.approx(7 / 3)
    assert aggregate(per, mask, "dapo").item() == pytest.approx(7 / 3)
    assert aggregate(per, mask, "dr_grpo", max_completion_length=3).item() == pytest.approx(7 / 6)
    assert aggregate(per, mask, "dr_grpo", max_completion_length=10).item() == pytest.approx(7 / 20)
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        aggregate(per, mask, "ppo")


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_micro_batches_sum_to_the_full_batch(loss_type):
    g = torch.Generator().manual_seed(0)
    per, mask = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) > 0.3).long()
    full = aggregate(per, mask, loss_type, 5)
    parts = sum(
        aggregate(per[s : s + 2], mask[s : s + 2], loss_type, 5, 6, int(mask.sum()))
        for s in (0, 2, 4)
    )
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_group_size_one_is_rejected():
    with pytest.raises(ValueError, match=r"group_size=1.*num_generations >= 2"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="cannot be split into groups of 3"):
        group_advantages(torch.ones(4), 3)


def test_mu1_beta0_gradient_is_plain_policy_gradient():
    """With old = current (mu = 1) and no KL, grad = -1/N sum_i A_i mean_t grad log pi(y_it)."""
    model = tiny()
    ro = rollout(model, [[1, 2, 3], [4, 5]], 3, 5, temperature=1.0, stop_ids=[0],
                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    adv = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.0, 0.0])
    mask = ro.completion_mask.float()
    logp, _ = token_logprobs(model, ro.tokens, ro.attention_mask, ro.n_completion, prefix=ro.prefix)
    aggregate(policy_loss(logp, logp.detach(), adv), mask, "grpo").backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp, _ = token_logprobs(model, ro.tokens, ro.attention_mask, ro.n_completion, prefix=ro.prefix)
    pg = -((adv[:, None] * logp * mask).sum(1) / mask.sum(1)).mean()
    pg.backward()
    for a, p in zip(ours, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)
    assert sum(float(g.abs().sum()) for g in ours) > 0


@pytest.mark.parametrize("kind", ["llama-tiny", "gpt2-tiny", "gemma3-tiny"])
def test_rollout_logprobs_equal_a_fresh_forward(kind):
    """Sampling-time log-probs (used as pi_old) = token_logprobs on the padded batch = each row alone."""
    model = tiny(kind=kind)
    prompts = [[1, 2, 3, 4, 5], [1, 2, 7], [1, 2, 3, 9, 10]]  # a shared prefix [1, 2], then padding
    ro = rollout(model, prompts, 2, 6, temperature=0.7, stop_ids=[3],
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert ro.prefix.tolist() == [1, 2]
    m = ro.completion_mask.bool()
    with torch.no_grad():
        batch, _ = token_logprobs(
            model, ro.tokens, ro.attention_mask, ro.n_completion, 0.7, prefix=ro.prefix
        )
    torch.testing.assert_close(ro.logps[m], batch[m], atol=1e-4, rtol=1e-4)
    for i, comp in enumerate(ro.completions):
        alone = torch.tensor([prompts[i // 2] + comp])
        with torch.no_grad():
            lp, _ = token_logprobs(model, alone, torch.ones_like(alone), len(comp), 0.7)
        torch.testing.assert_close(ro.logps[i, : len(comp)], lp[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama-tiny", "gpt2-tiny", "gemma3-tiny"])
def test_shared_prompts_equal_the_full_prompts(kind):
    """Running the common prefix once (batch of one) and each group's prompt once (batch of
    groups) gives the log-probs and the gradient of the plain left-padded full prompts."""
    model = tiny(kind=kind)
    prompts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9], [1, 2, 3, 11, 12, 13, 14]]
    ro = rollout(model, prompts, 2, 5, stop_ids=[0], generator=torch.Generator().manual_seed(2))
    assert ro.prefix.tolist() == [1, 2, 3] and ro.tokens.shape[1] == 4 + ro.n_completion
    L, adv = ro.n_completion, torch.linspace(-1, 1, 6)
    full_p, full_m = left_pad(prompts, 0)
    rows = torch.arange(3).repeat_interleave(2)
    full = torch.cat([full_p[rows], ro.tokens[:, -L:]], 1)
    full_mask = torch.cat([full_m[rows], ro.attention_mask[:, -L:]], 1)
    grads, logps = [], []
    for tokens, mask, prefix, share in (
        (ro.tokens, ro.attention_mask, ro.prefix, True),  # prefix, 3 prompts, 6 completions
        (ro.tokens, ro.attention_mask, ro.prefix, False),  # prefix, then 6 whole rows
        (full, full_mask, None, True),  # 3 full prompts, 6 completions
        (full, full_mask, None, False),  # the plain forward
    ):
        model.zero_grad()
        logp, _ = token_logprobs(model, tokens, mask, L, prefix=prefix, share_prompts=share)
        aggregate(policy_loss(logp, logp.detach(), adv), ro.completion_mask, "dapo").backward()
        logps.append(logp.detach()[ro.completion_mask.bool()])
        grads.append([p.grad.clone() for p in model.parameters()])
    for other, other_grads in zip(logps[:3], grads[:3], strict=True):
        torch.testing.assert_close(other, logps[3], atol=1e-5, rtol=1e-5)
        for a, b in zip(other_grads, grads[3], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_compiled_rollout_equals_eager_and_follows_weight_updates():
    """`compile=True` samples the same completions and log-probs as eager decoding, also after an
    in-place weight update (the compiled step reads the live parameters, not a frozen copy)."""
    model = tiny()
    prompts = [[1, 2, 3, 4, 5], [1, 2, 7]]

    def both() -> None:
        ro = []
        for compiled in (False, True):
            seeded = torch.Generator().manual_seed(5)
            ro.append(
                rollout(model, prompts, 3, 8, stop_ids=[3], compile=compiled, generator=seeded)
            )
        assert ro[0].completions == ro[1].completions
        torch.testing.assert_close(ro[0].logps, ro[1].logps, atol=1e-5, rtol=1e-5)

    both()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    both()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["float32", "autocast", "bf16-weights"])
def test_packed_decoding_equals_plain_decoding(mode, path, monkeypatch):
    """Rollouts decode with weights packed once for the CPU GEMM (`PackedWeights`, q/k/v and
    gate/up stacked into one matmul each): the same completions and log-probs as the plain
    `nn.Linear` path, and the model's modules are never changed. Where the packed kernel is off (an
    AVX2-only CPU for bf16, or LMLAB_KERNELS=plain) nothing is packed and the plain path gives the
    same."""
    from lmlab.generate import packed

    use_path(path, "packed_fp32" if mode == "float32" else "packed_bf16", monkeypatch)
    model = tiny(vocab=64).to(torch.bfloat16 if mode == "bf16-weights" else torch.float32)
    prompts = [[1, 2, 3, 4, 5], [1, 2, 7]]
    packs = spy(monkeypatch, "mkl", "_mkl_reorder_linear_weight")
    packs_bf16 = spy(monkeypatch, "mkldnn", "_reorder_linear_weight")
    before = {n: (type(m), dict(vars(m))) for n, m in model.named_modules()}
    runs, can_pack = [], packed.can_pack
    for use in (True, False):
        if not use:
            monkeypatch.setattr(packed, "can_pack", lambda *a: False)
        with torch.autocast("cpu", torch.bfloat16, enabled=mode == "autocast"):
            runs.append(rollout(model, prompts, 4, 12, generator=torch.Generator().manual_seed(3)))
    assert bool(packs_bf16 if mode != "float32" else packs) == (path == "fast")
    assert runs[0].completions == runs[1].completions
    torch.testing.assert_close(runs[0].logps, runs[1].logps, atol=1e-6, rtol=0)
    # nothing was set on, or replaced in, the model's modules; its weights are plain again
    assert {n: (type(m), dict(vars(m))) for n, m in model.named_modules()} == before
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    if path == "fallback":
        monkeypatch.setattr(packed, "can_pack", can_pack)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=mode == "autocast"):
            assert not can_pack(model, 3)
        assert not packs and not packs_bf16
        return
    monkeypatch.undo()
    x = torch.randn(3, 1, 32, dtype=model.unembed.weight.dtype)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    with torch.no_grad():
        plain = {"q": attn.q(x), "k": attn.k(x), "v": attn.v(x), "head": model.to_logits(x)}
        weights = packed.PackedWeights(model, 3)
        # one packed weight per plain linear: q/k/v and gate/up share one matmul per module
        names = set(weights.tensors)
        assert names == {
            n
            for n, p in model.named_parameters()
            if n.endswith("weight")
            and isinstance(model.get_submodule(n[: -len(".weight")]), torch.nn.Linear)
        }
        groups = {id(w.group) for w in weights.tensors.values()}
        assert len(groups) == len(weights.tensors) - 2 * 2 - 1 * 2  # q/k/v: 3 -> 1, gate/up: 2 -> 1
        torch.testing.assert_close(weights.logits(x), plain["head"])
        # the packed q/k/v product serves k and v only for the input q saw
        q = weights.tensors["blocks.0.attn.q.weight"]
        k = weights.tensors["blocks.0.attn.k.weight"]
        assert q.group.output(0, x) is not None and k.group.output(1, x.clone()) is None
        torch.testing.assert_close(torch.nn.functional.linear(x, q, attn.q.bias), plain["q"])
        torch.testing.assert_close(torch.nn.functional.linear(x, k, attn.k.bias), plain["k"])
        assert weights.tensors["blocks.0.attn.v.weight"].group.output(2, x) is not None
        gate, up = (weights.tensors[f"blocks.0.mlp.{n}.weight"] for n in ("gate", "up"))
        assert gate.group is up.group
        torch.testing.assert_close(torch.nn.functional.linear(x, gate, None), mlp.gate(x))
        torch.testing.assert_close(torch.nn.functional.linear(x, up, None), mlp.up(x))
        # other row counts take the plain path (float32) or the same oneDNN kernel (bf16)
        y = torch.randn(2, 1, 32, dtype=x.dtype)
        torch.testing.assert_close(torch.nn.functional.linear(y, q, attn.q.bias), attn.q(y))
    handle = attn.k.register_forward_hook(lambda *a: None)  # a hooked projection is not fused
    with torch.no_grad():
        hooked = packed.PackedWeights(model, 3).tensors
    assert "blocks.0.attn.k.weight" not in hooked
    assert hooked["blocks.0.attn.q.weight"].group.sizes == [attn.q.out_features]
    handle.remove()
