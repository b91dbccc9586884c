"""The one decode core: stop rules, finished rows, groups and shared prefixes, the training sample on
the KV cache, and sampling settings that come from `SamplingConfig` alone (API keywords, CLI flags)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from lmlab.commands import chat as chat_cmd
from lmlab.commands import generate as generate_cmd
from lmlab.errors import InputError
from lmlab.families import preset
from lmlab.generate import Decoding, SamplingConfig, generate
from lmlab.model import Transformer
from lmlab.train.sample import sample

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(ctx: int = 24) -> Transformer:
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=32, max_seq_len=ctx, d_model=32, n_layers=2, n_heads=4)
    return Transformer(cfg).eval()


def full_forward_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation recomputing the whole sequence each step (no cache)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_decoding_stops_rows_and_pads_them_after():
    model = tiny()
    prompts = [[1, 2, 3, 4], [5, 6]]
    free = [full_forward_greedy(model, p, 8) for p in prompts]
    stop = free[0][2]  # row 0 stops at its third token (row 1 may too, wherever it makes it)
    run = Decoding(model, prompts, SamplingConfig(), 8, stop_ids=[stop])
    steps = list(run)
    tokens = torch.stack([s.tokens for s in steps], 1)
    alive = torch.stack([s.alive for s in steps], 1)
    for b, want in enumerate(free):
        end = want.index(stop) + 1 if stop in want else len(want)
        assert tokens[b, :end].tolist() == want[:end]  # cached steps = full forwards
        assert alive[b].tolist() == [True] * end + [False] * (len(steps) - end)
        assert (tokens[b, end:] == model.cfg.pad_id).all()
    assert bool(run.done[0])


def test_finish_stops_a_row_and_the_loop_ends_when_all_are_done():
    model = tiny()
    run = Decoding(model, [[1, 2], [3, 4, 5]], SamplingConfig(), 10)
    made = []
    for step in run:
        made.append(step.alive.tolist())
        if len(made) == 2:
            run.finish(0)
        if len(made) == 4:
            run.finish(1)
    assert made == [[True, True]] * 2 + [[False, True]] * 2  # no step after both finished


def test_groups_and_shared_prefix_equal_repeated_full_prompts():
    """group_size G decodes each prompt G times from one prefill; share_prefix prefills the common
    prefix once: the same tokens and log-probs as the prompts repeated and read whole."""
    model = tiny()
    prompts = [[7, 8, 9, 1, 2], [7, 8, 9, 3]]
    sampling = SamplingConfig(temperature=1.0)

    def run(ids, **kw):
        steps = list(Decoding(model, ids, sampling, 6, generator=torch.Generator().manual_seed(1),
                              logprobs=True, **kw))  # fmt: skip
        return torch.stack([s.tokens for s in steps], 1), torch.stack([s.logps for s in steps], 1)

    repeated = run([p for p in prompts for _ in range(3)])
    for kw in ({"group_size": 3}, {"group_size": 3, "share_prefix": True}):
        tokens, logps = run(prompts, **kw)
        assert torch.equal(tokens, repeated[0]), kw
        torch.testing.assert_close(logps, repeated[1], atol=1e-5, rtol=0)
    shared = Decoding(model, prompts, sampling, 2, share_prefix=True)
    assert shared.prefix.tolist() == [7, 8, 9] and shared.tokens.shape == (2, 2)


def test_decoding_restores_the_training_mode_and_refuses_penalized_logprobs():
    model = tiny().train()
    list(Decoding(model, [[1, 2]], SamplingConfig(), 3))
    assert model.training
    with pytest.raises(InputError, match=r"repetition_penalty=1\.3 with log-probs"):
        Decoding(model, [[1, 2]], SamplingConfig(repetition_penalty=1.3), 3, logprobs=True)


def test_training_sample_uses_the_cache_and_runs_past_the_context():
    model = tiny(ctx=16)
    prompt = [1, 2, 3]
    assert sample(model, prompt, 10, temperature=0) == full_forward_greedy(model, prompt, 10)
    long = sample(model, prompt, 40, temperature=0)  # 3 + 40 tokens > 16: windows of 8 re-read
    assert len(long) == 40 and long[:14] == full_forward_greedy(model, prompt, 14)
    window = (prompt + long[:14])[-8:]  # the cache filled: go on from the last half context
    assert long[14:23] == full_forward_greedy(model, window, 9)
    drawn = sample(model, prompt, 12, generator=torch.Generator().manual_seed(0))
    again = sample(model, prompt, 12, generator=torch.Generator().manual_seed(0))
    assert drawn == again and all(0 <= t < 32 for t in drawn)


def test_sampling_keywords_are_the_sampling_fields():
    model = tiny()
    by_config = generate(model, [[1, 2]], sampling=SamplingConfig(temperature=0.9, top_k=5),
                         seed=3, max_new_tokens=6).sequences  # fmt: skip
    by_keyword = generate(model, [[1, 2]], temperature=0.9, top_k=5, seed=3, max_new_tokens=6)
    assert by_keyword.sequences == by_config
    overridden = generate(model, [[1, 2]], sampling=SamplingConfig(temperature=0.9, top_k=5),
                          temperature=0.0, max_new_tokens=6)  # fmt: skip
    assert overridden.sequences == generate(model, [[1, 2]], top_k=5, max_new_tokens=6).sequences
    with pytest.raises(InputError, match=r"generate got unknown setting\(s\) top_q .* top_p"):
        generate(model, [[1, 2]], top_q=0.9)


def test_cli_sampling_flags_come_from_sampling_config():
    """One flag per SamplingConfig field, with its type, default and help, in generate and chat."""
    for add in (generate_cmd.add_arguments, chat_cmd.add_arguments):
        p = argparse.ArgumentParser()
        add(p)
        flags = {a.dest: a for a in p._actions}
        for f in dataclasses.fields(SamplingConfig):
            assert flags[f.name].default == f.default
            assert f.metadata["help"] in flags[f.name].help
        args = p.parse_args(["--model", "m", "--prompt", "x"] if add is generate_cmd.add_arguments
                            else ["--model", "m"])  # fmt: skip
        assert generate_cmd.sampling_config(args) == SamplingConfig()
    args = p.parse_args(["--model", "m", "--top-k", "7", "--min-p", "0.05", "--temperature", "1"])
    assert generate_cmd.sampling_config(args) == SamplingConfig(1.0, 7, None, 0.05)
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "m", "--top-k", "0.5"])  # an int field takes ints only
