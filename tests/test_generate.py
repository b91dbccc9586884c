"""Generation: cached decoding equals full forwards, sampling rules, beam search and greedy vs
transformers, streaming, stop rules, hooks during generation, prefixes, bad input."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch

from lmlab.families import preset
from lmlab.generate import KVCache, SamplingConfig, TextStream, generate, stream_generate
from lmlab.generate.sampling import (
    apply_repetition_penalty,
    choose,
    filter_logits,
    sample_with_logprobs,
)
from lmlab.model import Transformer

transformers = pytest.importorskip("transformers")

TOL = 1e-4
FAMILIES = {  # windows shorter than the 21-token texts: decoding runs past them
    "gpt2-tiny": {},
    "llama-tiny": {},
    "mistral-tiny": {"sliding_window": 5},
    "gemma3-tiny": {"sliding_window": 6},
    "gpt-oss-tiny": {"sliding_window": 6},
}


@pytest.mark.parametrize("static", [False, True], ids=["growing", "static"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_cached_decoding_equals_full_forward(name, static):
    torch.manual_seed(0)
    model = Transformer(preset(name, **FAMILIES[name])).eval()
    lens, T0, N = [9, 6, 4], 9, 12
    toks = torch.randint(0, model.cfg.vocab_size, (3, T0 + N))
    prompt = torch.zeros(3, T0, dtype=torch.long)
    mask = torch.zeros(3, T0, dtype=torch.long)
    for b, n in enumerate(lens):  # left padding, unequal prompt lengths
        prompt[b, T0 - n :], mask[b, T0 - n :] = toks[b, :n], 1
    cache = KVCache(model, 3, T0 + N + 5 * static, static=static)  # static: spare slots too
    worst = 0.0
    with torch.no_grad():
        out = model(prompt, attention_mask=mask, cache=cache)[:, -1]
        for step in range(N + 1):
            for b, n in enumerate(lens):
                ref = model(toks[b : b + 1, : n + step])[0, -1]
                worst = max(worst, (out[b] - ref).abs().max().item())
            if step == N:
                break
            nxt = torch.stack([toks[b, lens[b] + step] for b in range(3)])[:, None]
            out = model(nxt, cache=cache)[:, 0]
    assert worst <= TOL, worst


def _hf_gpt2(seed: int):
    torch.manual_seed(seed)
    hc = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=40, n_positions=128, bos_token_id=39,
        eos_token_id=39, initializer_range=0.3,
    )  # fmt: skip
    from lmlab.weights.hf import config_from_hf, load_state_dict

    hf = transformers.GPT2LMHeadModel(hc).eval()
    ours = Transformer(config_from_hf(hc.to_dict())).eval()
    load_state_dict(ours, hf.state_dict())
    return hf, ours


def _strip(row: list[int], eos: int) -> list[int]:
    if eos in row:
        return row[: row.index(eos) + 1]
    return row


@pytest.mark.parametrize("early_stopping", [False, True])
def test_beam_search_equals_transformers(early_stopping):

    for seed in range(8):  # small vocabulary: EOS is often among the candidates
        hf, ours = _hf_gpt2(seed)
        prompt = torch.randint(0, 39, (1, 7))
        ref = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), num_beams=4, max_new_tokens=16,
            do_sample=False, early_stopping=early_stopping, pad_token_id=39,
        )  # fmt: skip
        got = generate(ours, prompt, num_beams=4, max_new_tokens=16, early_stopping=early_stopping)
        assert got.sequences[0] == _strip(ref[0, 7:].tolist(), 39), seed


def test_greedy_equals_transformers_on_random_gpt2_batch():
    hf, ours = _hf_gpt2(3)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]
    got = generate(ours, prompts, max_new_tokens=12)
    for p, seq in zip(prompts, got.sequences, strict=True):
        t = torch.tensor([p])
        ref = hf.generate(
            t,
            attention_mask=torch.ones_like(t),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=39,
        )
        assert seq == _strip(ref[0, len(p) :].tolist(), 39)


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    keep = filter_logits(logits, SamplingConfig(temperature=1.0, top_k=2)).isfinite()
    assert keep.tolist() == [[True, True, False, False, False]]
    p = logits.softmax(-1)[0]  # 0.636, 0.234, 0.086, ...
    keep = filter_logits(logits, SamplingConfig(temperature=1.0, top_p=0.8)).isfinite()
    assert keep.tolist() == [[True, True, False, False, False]] and p[0] < 0.8 < p[:2].sum()
    keep = filter_logits(logits, SamplingConfig(temperature=1.0, top_p=0.5)).isfinite()
    assert keep.tolist() == [[True, False, False, False, False]]
    keep = filter_logits(logits, SamplingConfig(temperature=1.0, min_p=0.3)).isfinite()
    assert keep.tolist() == [[True, True, False, False, False]]  # 0.234 / 0.636 >= 0.3 > 0.135
    pen = apply_repetition_penalty(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), 2.0)
    assert pen.tolist() == [[1.0, -4.0, 1.0]]


def test_sampling_draws_the_softmax_distribution():
    """Inverse-CDF draws match the probabilities (200k draws: within 0.005), zero-probability
    tokens are never drawn, and the returned log-probs are log_softmax(logits / T)."""
    logits = torch.tensor([2.0, float("-inf"), 0.5, 1.0, float("-inf"), -1.0]).repeat(200_000, 1)
    gen = torch.Generator().manual_seed(0)
    cfg = SamplingConfig(temperature=0.8)
    tokens, logp = sample_with_logprobs(logits, cfg, gen)
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    probs = (logits[0] / 0.8).softmax(-1)
    assert (freq - probs).abs().max() < 0.005 and freq[1] == 0 and freq[4] == 0
    torch.testing.assert_close(logp, probs.log()[tokens])
    freq = torch.bincount(choose(logits, cfg, gen), minlength=6).float() / len(tokens)
    assert (freq - probs).abs().max() < 0.005
    top2, logp = sample_with_logprobs(logits, SamplingConfig(temperature=0.8, top_k=2), gen)
    assert set(top2.tolist()) == {0, 3}  # drawn with top-k, scored without it (the RL ratio)
    torch.testing.assert_close(logp, probs.log()[top2])


def test_two_level_draw_across_blocks():
    """`draw` picks a vocabulary block, then a token in it: tokens at block edges and in the
    padded last block come out at their probabilities; zero-weight tokens never do."""
    from lmlab.generate.sampling import BLOCK, draw

    V = 2 * BLOCK + 188  # not a multiple of the block: the last block is padded
    live = torch.tensor([0, BLOCK - 1, BLOCK, 2 * BLOCK + 5, V - 1])
    weights = torch.zeros(V)
    weights[live] = torch.tensor([0.1, 0.3, 0.2, 0.15, 0.25])
    tokens = draw(weights.repeat(200_000, 1), torch.Generator().manual_seed(1))
    freq = torch.bincount(tokens, minlength=V).float() / len(tokens)
    assert set(tokens.unique().tolist()) == set(live.tolist())
    assert (freq[live] - weights[live]).abs().max() < 0.005
    only_last = torch.zeros(3, V)
    only_last[:, -1] = 1e-30  # all mass in the padded block's one real token, however tiny
    assert draw(only_last, None).tolist() == [V - 1] * 3


def test_seeded_sampling_is_reproducible_and_varies():
    model = Transformer(preset("llama-tiny")).eval()
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95)
    a = generate(model, [[1, 2, 3]], seed=7, num_return_sequences=4, **kw).sequences
    b = generate(model, [[1, 2, 3]], seed=7, num_return_sequences=4, **kw).sequences
    assert a == b and len({tuple(s) for s in a}) > 1


def test_stop_ids_and_stop_strings():
    model = Transformer(preset("gpt2-tiny")).eval()
    free = generate(model, [[5, 6, 7]], max_new_tokens=8).sequences[0]
    stop = free[3]
    got = generate(model, [[5, 6, 7]], max_new_tokens=8, stop_ids=[stop])
    assert got.sequences[0] == free[: free.index(stop) + 1] and got.finish_reasons == ["stop_id"]


class _Bytes:
    """A byte-level toy tokenizer: id i is byte i."""

    special_tokens: ClassVar[dict] = {}
    eos_id = None

    def encode(self, text, add_special=False):
        return list(text.encode())

    def decode(self, ids, skip_special=False):
        return bytes(ids).decode(errors="replace")

    def id_to_bytes(self, i):
        return bytes([i])


def test_stream_never_splits_a_character():
    tok, text = _Bytes(), "naïve → 東京 🙂"
    stream = TextStream(tok)
    pieces = [stream.push(b) for b in text.encode()] + [stream.flush()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def test_stream_generate_matches_generate():
    model = Transformer(preset("gpt2-tiny", vocab_size=256)).eval()
    tok = _Bytes()
    full = generate(model, "ab", tokenizer=tok, max_new_tokens=12)
    streamed = "".join(stream_generate(model, "ab", tok, max_new_tokens=12))
    assert streamed == TextStream(tok).decoder.decode(bytes(full.sequences[0]), final=True)


def test_hooks_stay_live_during_generation():
    model = Transformer(preset("llama-tiny")).eval()
    plain = generate(model, [[1, 2, 3]], max_new_tokens=6).sequences[0]
    push = torch.randn(model.cfg.d_model) * 50
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x + push)]):
        steered = generate(model, [[1, 2, 3]], max_new_tokens=6).sequences[0]
    assert steered != plain
    assert generate(model, [[1, 2, 3]], max_new_tokens=6).sequences[0] == plain


def test_compiled_generation_equals_eager_compiles_once_and_keeps_hooks():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Transformer(preset("gemma3-tiny", sliding_window=6)).eval()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [1, 2]]  # left padding; decoding runs past the window
    eager = generate(model, prompts, max_new_tokens=12).sequences
    assert generate(model, prompts, max_new_tokens=12, compile=True).sequences == eager
    copy.deepcopy(model)  # nothing compiled is left on the model
    graphs = counters["stats"]["unique_graphs"]
    again = generate(model, [[3, 4, 5], [9, 8]], max_new_tokens=20, compile=True).sequences
    assert counters["stats"]["unique_graphs"] == graphs  # same batch and cache bucket: replayed
    assert again == generate(model, [[3, 4, 5], [9, 8]], max_new_tokens=20).sequences
    push = torch.randn(model.cfg.d_model) * 50
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x + push)]):
        steered = generate(model, prompts, max_new_tokens=12, compile=True).sequences
        assert steered == generate(model, prompts, max_new_tokens=12).sequences
    assert steered != eager


def test_static_cache_tensors_are_all_found_for_cuda_graphs():
    """On a GPU the compiled step replays as a CUDA graph, which needs every tensor the step
    mutates marked as a static address: `_cache_tensors` must find them all (each layer's keys and
    values, the masks, the counters); on the CPU no graph is recorded."""
    from lmlab.cache import KVCache
    from lmlab.generate.compiled import _cache_tensors, decoding_cache

    model = Transformer(preset("llama-tiny")).eval()
    cache = KVCache(model, 2, 16, static=True)
    found = {id(t) for t in _cache_tensors(cache)}
    layers = [*cache.k, *cache.v]
    assert len(layers) == 2 * model.cfg.n_layers and {id(t) for t in layers} <= found
    held = {id(t): t for t in _cache_tensors(cache)}
    before = {i: t.clone() for i, t in held.items()}
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3], [4, 5, 6]]), cache=cache)
    # written in place (the same tensor, new values): what a replayed graph must find again;
    # `slots` is rebuilt from the cursor in each step (a graph output, not a mutated input)
    after = {id(t) for t in _cache_tensors(cache)}
    written = {i for i in after & set(held) if not torch.equal(before[i], held[i])}
    assert {id(cache.key_mask), id(cache.k[0]), id(cache.v[-1]), id(cache.next_pos)} <= written
    assert written <= found
    _, forward = decoding_cache(model, 2, 16, compile=True)
    assert "clone" not in forward.__code__.co_names  # on the CPU: no clone-per-replay wrapper


def test_compiled_steps_skip_module_guards_but_follow_every_model_change():
    """The compiled step checks the model once per generation (`signature`), not dynamo's module
    guards at every token: weights changed in place, another model of another size, a hook attached
    after compiling and a new attribute value must all still give the eager tokens."""
    from lmlab.generate.compiled import signature

    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny")).eval()
    prompts = [[5, 6, 7], [1, 2, 3]]
    first = generate(model, prompts, max_new_tokens=8, compile=True).sequences
    assert first == generate(model, prompts, max_new_tokens=8).sequences
    sig = signature(model)
    with torch.no_grad():  # an optimizer step: same tensors, new values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert signature(model) == sig  # values are read at every call, not guarded
    moved = generate(model, prompts, max_new_tokens=8, compile=True).sequences
    assert moved == generate(model, prompts, max_new_tokens=8).sequences != first
    other = Transformer(preset("llama-tiny", n_layers=3, d_model=48)).eval()
    assert (
        generate(other, prompts, max_new_tokens=8, compile=True).sequences
        == generate(other, prompts, max_new_tokens=8).sequences
    )
    push = torch.randn(model.cfg.d_model) * 50
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x + push)]):
        assert signature(model) != sig
        hooked = generate(model, prompts, max_new_tokens=8, compile=True).sequences
        assert hooked == generate(model, prompts, max_new_tokens=8).sequences != moved
    assert generate(model, prompts, max_new_tokens=8, compile=True).sequences == moved
    model.blocks[0].attn.scale = 0.5  # a plain attribute the forward reads
    assert signature(model) != sig
    assert (
        generate(model, prompts, max_new_tokens=8, compile=True).sequences
        == generate(model, prompts, max_new_tokens=8).sequences
    )


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "gpt-oss-tiny"])
def test_prefix_equals_real_prompt_kv(name):
    """Keys/values of a real prompt, installed as a prefix, give the logits of prompt + suffix."""
    torch.manual_seed(1)
    model = Transformer(preset(name)).eval()
    prompt, suffix = torch.randint(0, 500, (1, 5)), torch.randint(0, 500, (1, 4))
    cache = KVCache(model, 1, 9)
    with torch.no_grad():
        model(prompt, cache=cache)
        ref = model(torch.cat([prompt, suffix], 1))[:, 5:]
        for i, blk in enumerate(model.blocks):
            blk.attn.prefix = (cache.k[i][0, :, :5], cache.v[i][0, :, :5])
        got = model(suffix, position_ids=torch.arange(5, 9)[None])
        for blk in model.blocks:
            blk.attn.prefix = None
    assert (got - ref).abs().max().item() <= TOL


def test_bad_input():
    model = Transformer(preset("gpt2-tiny")).eval()
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [[]])
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(model, [[1] * (model.cfg.max_seq_len + 1)])
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        generate(model, [[1, 2]], max_new_tokens=model.cfg.max_seq_len)
    fits = model.cfg.max_seq_len - 1  # the last new token is never fed back
    assert len(generate(model, [[1, 2]], max_new_tokens=fits).sequences[0]) == fits
    with pytest.raises(ValueError, match=r"top_p=1.5 must be in \(0, 1\]"):
        generate(model, [[1, 2]], temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match=r"top_p=0 must be in \(0, 1\]"):
        generate(model, [[1, 2]], temperature=1.0, top_p=0)
    with pytest.raises(ValueError, match="unknown stop token id 99999"):
        generate(model, [[1, 2]], stop_ids=[99999])
    with pytest.raises(ValueError, match="unknown stop token '<nope>'"):
        generate(model, [[1, 2]], stop_ids=["<nope>"], tokenizer=_Bytes())
    with pytest.raises(ValueError, match="need a tokenizer"):
        generate(model, "hello")
    with pytest.raises(ValueError, match="cache is full"):
        cache = KVCache(model, 1, 4)
        model(torch.ones(1, 5, dtype=torch.long), cache=cache)
