"""Interpretability on tiny random models: cache algebra, stop-early caching, lenses, attribution,
patching, sinks, probes and plots; bad input gives clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.families import preset
from lmlab.hooks import HookError
from lmlab.interp import (
    act_name,
    attribution,
    heads,
    hook_name,
    lens,
    patching,
    probes,
    run_with_cache,
    sinks,
    viz,
)
from lmlab.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(name: str = "llama-tiny", **kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(preset(name, **kw)).eval()
    # bigger random weights than init so components are not all tiny
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    return m


def toks(m: Transformer, B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, m.cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "gpt-oss-tiny"])
def test_decompose_resid_sums_to_residual_and_dla_sums_to_logits(name):
    m = tiny(name)
    x = toks(m)
    logits, cache = run_with_cache(m, x)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and labels[-1] == f"{m.cfg.n_layers - 1}_mlp_out"
    assert torch.allclose(stack.sum(0), cache["resid_post", m.cfg.n_layers - 1], atol=1e-5)
    assert torch.allclose(cache.decompose_resid(1).sum(0), cache["resid_pre", 1], atol=1e-5)
    # direct logit attribution over a full decomposition = the logit minus the final norm bias's share
    answer = torch.tensor([3, 7])
    attrs, _ = attribution.dla_by_layer(cache, answer, pos=-1)
    bias = m.ln_final.bias
    bias_part = (m.unembed.weight[answer] @ bias) if bias is not None else 0.0
    assert torch.allclose(attrs.sum(0) + bias_part, logits[torch.arange(2), -1, answer], atol=1e-4)


def test_head_results_sum_to_attention_output_and_neurons_to_mlp():
    m = tiny("gpt2-tiny")
    x = toks(m)
    _, cache = run_with_cache(m, x)
    heads_stack, labels = cache.stack_head_results(return_labels=True)
    L, H = m.cfg.n_layers, m.cfg.n_heads
    assert heads_stack.shape == (L * H, 2, 12, m.cfg.d_model) and labels[H] == "L1H0"
    per_layer = heads_stack.view(L, H, 2, 12, -1).sum(1) + m.blocks[0].attn.o.bias
    assert torch.allclose(per_layer[0], cache["attn_out", 0], atol=1e-5)
    # per-head results are computed from z on demand: no hook_result needed in the cache
    _, small = run_with_cache(m, x, names_filter=lambda n: n.endswith(("hook_z", "resid_post")))
    assert torch.allclose(small.stack_head_results(pos_slice=-1), heads_stack[:, :, -1], atol=1e-5)
    answer, wrong = 5, 9
    by_head = attribution.dla_by_head(cache, answer, wrong)
    dirs = cache.logit_attrs(heads_stack, answer, wrong)[:, :, -1].view(L, H, 2)
    assert torch.allclose(by_head, dirs, atol=1e-5)
    neurons = attribution.dla_by_neuron(cache, 1, answer, wrong)
    mlp_attr = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), answer, wrong, pos_slice=-1)[
        -1
    ]
    bias_part = cache.logit_attrs(
        m.blocks[1].mlp.down.bias.expand(1, 2, -1), answer, wrong, pos_slice=-1
    )[0]
    assert torch.allclose(neurons.sum(-1) + bias_part, mlp_attr, atol=1e-4)


def test_accumulated_resid_and_logit_lens_end_at_the_output():
    m = tiny()
    x = toks(m)
    logits, cache = run_with_cache(m, x)
    _, labels = cache.accumulated_resid(return_labels=True, incl_mid=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    lens_logits = lens.layer_logits(m, x, pos=-1)
    assert lens_logits.shape == (m.cfg.n_layers + 1, 2, m.cfg.vocab_size)
    assert torch.allclose(lens_logits[-1], logits[:, -1], atol=1e-4)
    table = lens.lens_table(m, x[:1], k=3)
    assert int(table.target_ranks[-1]) == 0 and table.top_ids.shape == (3, 3)
    tuned = lens.TunedLens(m)  # identity at init: same as the logit lens
    assert torch.allclose(
        tuned(cache["resid_pre", 1], 1), lens.LogitLens(m)(cache["resid_pre", 1], 1)
    )
    losses = lens.fit_tuned_lens(tuned, [x], steps=15, lr=1e-2)
    assert losses[-1] < losses[0]


def test_cache_only_what_is_asked_and_stop_early():
    m = tiny()
    x = toks(m)
    out, cache = run_with_cache(m, x, names_filter="blocks.0.hook_resid_post", stop_at_layer="auto")
    assert cache.keys() == ["blocks.0.hook_resid_post"]
    assert torch.allclose(out, cache["resid_pre", 1] if "blocks.1.hook_resid_pre" in cache else out)
    assert out.shape == (2, 12, m.cfg.d_model)  # stopped: the residual, not logits
    _, full = run_with_cache(m, x, names_filter="blocks.1.hook_resid_pre")
    assert torch.allclose(out, full["resid_pre", 1], atol=1e-6)
    assert not out.requires_grad
    _, g = run_with_cache(m, x, names_filter="blocks.0.hook_resid_post", grads=True)
    assert g["resid_post", 0].requires_grad


def test_bad_input_gives_clear_errors():
    m = tiny("gpt2-tiny")
    x = toks(m)
    with pytest.raises(HookError, match=r"Did you mean blocks\.0\.hook_resid_pre"):
        run_with_cache(m, x, names_filter="blocks.0.hook_resid_pr")
    with pytest.raises(HookError, match="matched no hook point"):
        run_with_cache(m, x, names_filter=lambda n: "nope" in n)
    with pytest.raises(HookError, match="empty list"):
        run_with_cache(m, x, names_filter=[])
    with pytest.raises(HookError, match="would never fire"):
        run_with_cache(m, x, names_filter="blocks.1.hook_resid_post", stop_at_layer=1)
    with pytest.raises(ValueError, match="stop_at_layer=9"):
        run_with_cache(m, x, stop_at_layer=9)
    _, cache = run_with_cache(m, x, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(HookError, match="not in this cache"):
        cache.decompose_resid()
    with pytest.raises(HookError, match="Did you mean pattern"):
        cache["patern", 0]
    metric = patching.logit_diff(1, 2)
    with pytest.raises(patching.PatchingError, match=r"same number of tokens"):
        patching.patch_by_position(m, x, x[:, :-1], metric)
    with pytest.raises(
        patching.PatchingError,
        match=r"shape \(2, 12, 256\) there, the patch has shape \(2, 11, 256\)",
    ):
        patching.patch_activation(m, x, "blocks.0.hook_resid_pre", torch.zeros(2, 11, 256), metric)
    with pytest.raises(HookError, match="Did you mean"):
        patching.patch_activation(m, x, "blocks.0.hook_resid_pr", torch.zeros(2, 12, 256), metric)
    with pytest.raises(patching.PatchingError, match="one value per sequence"):
        patching.patch_by_position(m, x, toks(m, seed=2), lambda lg: lg[:, -1, :3])
    with pytest.raises(ValueError, match="sandwich norm"):
        m2 = tiny("gemma3-tiny")
        run_with_cache(m2, toks(m2))[1].stack_head_results()


def test_patching_recovers_clean_run_and_attribution_agrees():
    m = tiny()
    clean, corrupt = toks(m, 1, 10, seed=3), toks(m, 1, 10, seed=4)
    with torch.no_grad():
        lc, lx = m(clean), m(corrupt)
    answer, wrong = int(lc[0, -1].argmax()), int(lx[0, -1].argmax())
    base = patching.logit_diff(answer, wrong)
    metric = patching.normalized(base, float(base(lc)), float(base(lx)))
    res = patching.patch_by_position(m, clean, corrupt, metric, "resid_pre")
    assert res.shape == (m.cfg.n_layers, 10)
    # patching the whole residual at layer 0 at every position = the clean run; position-wise,
    # the last position of the last layer's input carries everything the next layer needs there
    assert res[0].max() < 1.01
    one = patching.patch_activation(
        m,
        corrupt,
        "blocks.0.hook_resid_pre",
        run_with_cache(m, clean, names_filter="blocks.0.hook_resid_pre")[1]["resid_pre", 0],
        metric,
    )
    assert one == pytest.approx(1.0, abs=1e-4)
    # one batched run = the same numbers as patching one position at a time
    _, cc = run_with_cache(m, clean, names_filter="blocks.1.hook_resid_pre")
    single = patching.patch_activation(
        m,
        corrupt,
        "blocks.1.hook_resid_pre",
        cc["resid_pre", 1][:, 4],
        metric,
        index=(slice(None), 4),
    )
    assert res[1, 4] == pytest.approx(single, abs=1e-4)
    h = patching.patch_heads(m, clean, corrupt, metric, "z")
    assert h.shape == (m.cfg.n_layers, m.cfg.n_heads)
    hp = patching.patch_heads(m, clean, corrupt, metric, "pattern", by_position=True)
    assert hp.shape == (m.cfg.n_layers, 10, m.cfg.n_heads)
    assert patching.attribution_patch(m, clean, corrupt, metric, "resid_pre").shape == res.shape
    assert patching.attribution_patch(m, clean, corrupt, metric, "z").shape == h.shape


def test_attribution_patching_tracks_real_patching_on_branch_outputs():
    torch.manual_seed(0)
    m = Transformer(preset("llama-tiny")).eval()  # default init: close to linear
    clean, corrupt = toks(m, 1, 10, seed=3), toks(m, 1, 10, seed=4)
    with torch.no_grad():
        lc, lx = m(clean), m(corrupt)
    base = patching.logit_diff(int(lc[0, -1].argmax()), int(lx[0, -1].argmax()))
    metric = patching.normalized(base, float(base(lc)), float(base(lx)))
    for kind in ("attn_out", "mlp_out"):
        real = patching.patch_by_position(m, clean, corrupt, metric, kind)
        approx = patching.attribution_patch(m, clean, corrupt, metric, kind)
        assert torch.corrcoef(torch.stack([approx.flatten(), real.flatten()]))[0, 1] > 0.8, kind


def test_random_init_models_have_no_strong_heads():
    for name in ["gpt2-tiny", "llama-tiny", "mistral-tiny", "gpt-oss-tiny"]:
        torch.manual_seed(0)
        m = Transformer(preset(name)).eval()
        scores = heads.all_head_scores(m, n=30, batch=4)
        for kind, s in scores.items():
            assert s.max() < 0.2, (name, kind, s.max())
        assert heads.detect_heads(m, "induction", threshold=0.2, n=30, batch=4) == []


def test_sink_share_rows_sum_to_one_and_finds_a_planted_sink():
    m = tiny("gpt-oss-tiny")
    share = sinks.sink_share(m, toks(m))
    total = share.by_head.sum(-1) + share.learned
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)
    assert (share.learned > 0).all()
    # plant a sink: give token 7 a huge key along every query direction in layer 0 of a BERT
    bert = tiny("bert-tiny")
    x = toks(bert, 4, 16)
    x[:, 5] = 7
    with torch.no_grad():
        bert.embed.weight[7] *= 30
    s = sinks.sink_share(bert, x)
    assert s.by_layer[0].argmax() == 5
    top = sinks.top_sink_tokens(
        bert,
        lambda t: [int(c) for c in t.split()],
        str,
        [" ".join(map(str, row.tolist())) for row in x],
        k=3,
        min_count=2,
    )
    assert top[0].token == "7"


def test_probes_find_a_linear_feature_and_not_noise():
    m = tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(10, m.cfg.vocab_size, (160, 8), generator=g)
    labels = torch.randint(0, 2, (160,), generator=g)
    x[:, 2] = torch.where(labels == 1, 3, 4)  # the label is written into token 2
    acc = probes.probe_layers(m, x, labels, pos="mean", steps=100)
    assert acc.shape == (m.cfg.n_layers,) and acc.min() > 0.9
    noise = probes.probe_layers(
        m, x, torch.randint(0, 2, (160,), generator=g), pos="mean", steps=100
    )
    assert noise.max() < 0.75
    per_head = probes.probe_heads(m, x, labels, pos="mean", steps=100)
    assert per_head.shape == (m.cfg.n_layers, m.cfg.n_heads) and per_head.max() > 0.9
    with pytest.raises(ValueError, match="labels"):
        probes.train_probe(torch.zeros(10, 4), torch.zeros(9))


def test_plots_are_written(tmp_path):
    m = tiny()
    x = toks(m, 1, 8)
    _, cache = run_with_cache(m, x, names_filter=lambda n: n.endswith("hook_pattern"))
    pats = torch.stack([cache["pattern", i][0] for i in range(m.cfg.n_layers)])
    words = [f"t{i}" for i in range(8)]
    files = [
        viz.plot_pattern(pats[0, 0], words, tmp_path / "p.png"),
        viz.plot_head_grid(pats, tmp_path / "g.png", scores=pats[..., -1, 0]),
        viz.plot_head_scores(pats[..., -1, 0], tmp_path / "s.png"),
        viz.plot_patching(torch.randn(2, 8), tmp_path / "patch.png", tokens=words),
        viz.plot_lens_table(lens.lens_table(m, x), str, tmp_path / "lens.png"),
        viz.plot_sink_share({"a": torch.rand(2)}, tmp_path / "sink.png"),
    ]
    for f in files:
        assert f.stat().st_size > 2000 and f.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "gemma3-tiny", "olmo2-tiny"])
def test_apply_ln_to_stack_is_the_models_own_norm(name):
    m = tiny(name)
    with torch.no_grad():  # norm weights away from their init, so Gemma's (1 + w) matters
        for p in m.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.3)
    _, cache = run_with_cache(m, toks(m))
    L = m.cfg.n_layers
    checked = 0
    for layer, norm, resid, want in [
        (
            None,
            m.ln_final,
            cache["resid_post", L - 1],
            cache.cache_dict.get("ln_final.hook_normalized"),
        ),
        (
            1,
            m.blocks[1].ln1,
            cache["resid_pre", 1],
            cache.cache_dict.get("blocks.1.ln1.hook_normalized"),
        ),
    ]:
        if norm is None:  # OLMo 2 has no norm before its sublayers
            with pytest.raises(ValueError, match="no norm before block 1"):
                cache.apply_ln_to_stack(resid[None], layer)
            continue
        bias = norm.bias if norm.bias is not None else 0.0
        whole = cache.apply_ln_to_stack(resid[None], layer)[0] + bias
        assert torch.allclose(whole, want, atol=1e-5)  # one component: the norm's own output
        pieces = cache.apply_ln_to_stack(torch.stack([0.3 * resid, 0.7 * resid]), layer)
        assert torch.allclose(pieces.sum(0) + bias, want, atol=1e-5)  # linear at the stream's scale
        checked += 1
    assert checked >= 1


def test_short_names_come_from_the_models_hook_names():
    m = tiny("gemma3-tiny")  # QK-norm and sandwich norms: hooks the TransformerLens table never had
    _, cache = run_with_cache(m, toks(m))
    assert cache["scale", 0, "attn.q_norm"] is cache["blocks.0.attn.q_norm.hook_scale"]
    assert cache["normalized", 1, "ln2_post"] is cache["blocks.1.ln2_post.hook_normalized"]
    assert (
        cache["normalized", 1] is cache["blocks.1.ln1.hook_normalized"]
    )  # TransformerLens's default
    assert cache["normalized"] is cache["ln_final.hook_normalized"]
    assert cache["attn", 1] is cache["pattern", 1]
    assert [t.shape for t in cache.layers("pattern")] == [
        cache["pattern", 0].shape
    ] * m.cfg.n_layers
    for short in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v"):
        assert act_name(short, 1) == hook_name(m, short, 1)  # the no-model rule agrees
    for short in ("rot_q", "rot_k", "attn_scores", "pattern", "z", "result", "pre", "post"):
        assert act_name(short, 1) == hook_name(m, short, 1)
    assert act_name("embed") == hook_name(m, "embed") == "hook_embed"
    olmo = tiny("olmo2-tiny")  # no ln1: a bare ("normalized", 0) is ambiguous
    with pytest.raises(HookError, match="several modules"):
        hook_name(olmo, "normalized", 0)
    with pytest.raises(HookError, match="give a layer"):
        cache["z"]
    with pytest.raises(HookError, match="Did you mean pattern"):
        cache["patern", 0]


def test_norm_maths_lives_only_in_the_model():
    lmlab_dir = Path(__file__).resolve().parents[1] / "lmlab"
    for f in [lmlab_dir / "hooks.py", *sorted((lmlab_dir / "interp").glob("*.py"))]:
        text = f.read_text()
        assert "rmsnorm_gemma" not in text and ".eps" not in text, (
            f"{f.name} re-implements a norm; use the model's Norm (linear, divisor, weight_applied)"
        )
