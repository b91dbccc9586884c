"""GRPO speed: lmlab `GRPOTrainer` vs TRL's `GRPOTrainer` (transformers backend, no vLLM), same run.

    python bench/grpo_speed.py [--model smollm2-135m-instruct] [--group 8] [--prompts 2]
        [--new-tokens 32] [--steps 2] [--threads 1] [--eos] [--only lmlab|trl] [--compile] [--bf16]
        [--rounds 1] [--rollout-precision bf16 int8 int4]

Both trainers get the same weights (lmlab's model dequantized once; TRL's is a transformers Llama
holding the same tensors), the same arithmetic word-problem prompts (chat template applied as
text), group size, prompts per step, completion length, temperature 1, beta 0, loss `dapo`,
learning rate, full-parameter AdamW and one optimizer step per batch of rollouts (float32, or with
`--bf16` bf16 autocast over float32 weights on both sides). Without `--eos`
the stop token is ignored, so every completion has exactly `--new-tokens` tokens in both.
`--rollout-precision KIND ...` adds lmlab runs whose rollouts are sampled under bf16 autocast or
by an int8/int4 weight-only copy of the float32 policy, re-made after every optimizer step (that
cost is inside the rollout time); training stays float32 ("float32-policy terms").

Measured after one warm-up step: rollout tokens/s (completion tokens / time inside generation)
and optimizer steps per minute (wall time of whole steps: rollout, rewards, forward, backward,
optimizer). Prints both libraries and the ratio lmlab / TRL; with `--rounds N` the pair runs N times
(on a shared machine the speed of both drifts by tens of percent over minutes) and the median
ratio is printed too.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings

import torch

import lmlab
from lmlab.packaged import packaged_path
from lmlab.rl import GRPOConfig, GRPOTrainer
from lmlab.rl.config import grpo_train_config
from lmlab.rl.tasks import ArithmeticTask
from lmlab.weights.gguf import gguf_to_hf


def hf_pieces(name: str):
    """A transformers Llama + tokenizer holding the packaged GGUF's dequantized weights."""
    import transformers

    path = packaged_path(name)
    if path is None or path.suffix != ".gguf":
        raise SystemExit(f"{name} is not a packaged GGUF model; this bench needs one")
    hf_cfg, sd, _ = gguf_to_hf(path)
    cfg = transformers.LlamaConfig(
        **{k: v for k, v in hf_cfg.items() if k not in ("architectures", "model_type")}
    )
    model = transformers.LlamaForCausalLM(cfg)
    model.load_state_dict(sd, strict=False)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.pad_token = tok.pad_token or tok.eos_token
    return model.float(), tok


def bench_lmlab(
    args, rows: list[dict], task, compile: bool = False, precision: str = "policy"
) -> dict:
    model, tok = lmlab.load(args.model)
    cfg = GRPOConfig(
        model=args.model, compile=compile, rollout_precision=precision, num_generations=args.group, prompts_per_step=args.prompts,
        micro_batch_size=args.group * args.prompts, max_new_tokens=args.new_tokens,
        beta=0.0, loss_type="dapo", temperature=1.0, eval_size=0,
        train=grpo_train_config(lr=args.lr, max_steps=args.steps + 1, out_dir=args.out + "/lmlab",
                                seed=0, dtype="bfloat16" if args.bf16 else "float32"),
    )  # fmt: skip
    trainer = GRPOTrainer(model.float(), tok, cfg, task)
    trainer.prompt_text = lambda row: row["text"]  # the exact strings TRL gets
    if not args.eos:
        trainer.stop_ids = []
    trainer.step()  # warm-up
    t0 = time.perf_counter()
    recs = [trainer.step() for _ in range(args.steps)]
    wall = time.perf_counter() - t0
    toks = sum(r["rollout_tokens"] for r in recs)
    t_roll = sum(r["rollout_tokens"] / r["rollout_tok_s"] for r in recs)
    return {"rollout_tok_s": toks / t_roll, "steps_per_min": 60 * args.steps / wall,
            "tokens_per_step": toks / args.steps, "rollout_share": t_roll / wall}  # fmt: skip


def bench_trl(args, rows: list[dict], task) -> dict:
    import datasets
    import transformers
    import trl

    model, tok = hf_pieces(args.model)
    n = args.group * args.prompts
    gen_kwargs = {} if args.eos else {"min_new_tokens": args.new_tokens}
    cfg = trl.GRPOConfig(
        output_dir=args.out + "/trl", per_device_train_batch_size=n, gradient_accumulation_steps=1,
        num_generations=args.group, max_completion_length=args.new_tokens, temperature=1.0,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
        loss_type="dapo", max_steps=args.steps + 1, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, bf16=args.bf16, fp16=False, disable_tqdm=True, seed=0,
        generation_kwargs=gen_kwargs, dataloader_num_workers=0, max_grad_norm=1.0,
        weight_decay=0.0,
    )  # fmt: skip
    data = datasets.Dataset.from_list([{"prompt": r["text"], "answer": r["answer"]} for r in rows])
    trainer = trl.GRPOTrainer(
        model=model, reward_funcs=list(task.reward_funcs), args=cfg, train_dataset=data,
        processing_class=tok,
    )  # fmt: skip
    gen = {"tokens": [], "seconds": []}
    inner = trainer._generate_single_turn

    def timed(*a, **kw):
        t = time.perf_counter()
        ids, logprobs = inner(*a, **kw)
        gen["seconds"].append(time.perf_counter() - t)
        gen["tokens"].append(sum(len(c) for c in ids))
        return ids, logprobs

    trainer._generate_single_turn = timed
    ends: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.remove_callback(transformers.PrinterCallback)  # no per-step log dicts on stdout
    trainer.train()
    wall = ends[-1] - ends[0]  # the steps after the warm-up step
    toks, secs = sum(gen["tokens"][1:]), sum(gen["seconds"][1:])
    return {"rollout_tok_s": toks / secs, "steps_per_min": 60 * (len(ends) - 1) / wall,
            "tokens_per_step": toks / (len(ends) - 1), "rollout_share": secs / wall}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--group", type=int, default=8, help="num_generations G")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per optimizer step")
    ap.add_argument("--new-tokens", type=int, default=32, help="completion length")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    ap.add_argument("--eos", action="store_true", help="stop at EOS (lengths then differ)")
    ap.add_argument("--only", choices=["lmlab", "trl"], default=None)
    ap.add_argument("--compile", action="store_true",
                    help="also lmlab with compiled rollouts (of each --rollout-precision too)")  # fmt: skip
    ap.add_argument("--bf16", action="store_true", help="both under bf16 autocast (fp32 weights)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat lmlab then TRL this many times; ratios per round and their median")  # fmt: skip
    ap.add_argument("--out", default="/tmp/lmlab_grpo_bench")
    ap.add_argument("--rollout-precision", nargs="*", default=[],
                    choices=["bf16", "int8", "int4"], help="also lmlab with these rollouts")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    _, tok = lmlab.load(args.model)
    task = ArithmeticTask(n_train=200, n_test=1)
    system = task.instruction
    for r in task.train:
        msgs = [{"role": "system", "content": system}]
        for q, a in task.shots:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        r["text"] = tok.apply_chat_template([*msgs, {"role": "user", "content": r["prompt"]}],
                                            add_generation_prompt=True, tokenize=False)  # fmt: skip
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; G={args.group}, {args.prompts} prompts/step, "
          f"{args.new_tokens} new tokens, {args.steps} timed steps, eos={args.eos}, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}")  # fmt: skip
    runs = [("lmlab", bench_lmlab), ("trl", bench_trl)]
    if args.compile:
        runs.insert(1, ("lmlab+compile", lambda *a: bench_lmlab(*a, compile=True)))
    for kind in args.rollout_precision:
        runs.insert(-1, (f"lmlab+{kind}", lambda *a, k=kind: bench_lmlab(*a, precision=k)))
        if args.compile:
            runs.insert(-1, (f"lmlab+{kind}+compile",
                             lambda *a, k=kind: bench_lmlab(*a, compile=True, precision=k)))  # fmt: skip
    runs = [(name, fn) for name, fn in runs if args.only in (None, name.split("+")[0])]
    ratios: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        results = {}
        for name, fn in runs:
            torch.manual_seed(0)
            results[name] = fn(args, task.train, task)
            res = results[name]
            print(f"{name:13s} rollout {res['rollout_tok_s']:8.1f} tok/s   {res['steps_per_min']:6.2f} "
                  f"steps/min   {res['tokens_per_step']:.0f} tokens/step, rollout "
                  f"{100 * res['rollout_share']:.0f}% of step time")  # fmt: skip
        b = results.get("trl")
        for name, a in results.items():
            if b is not None and name != "trl":
                pair = (
                    a["rollout_tok_s"] / b["rollout_tok_s"],
                    a["steps_per_min"] / b["steps_per_min"],
                )
                ratios.setdefault(name, []).append(pair)
                print(f"round {r + 1} ratio {name}/TRL: rollout tokens/s {pair[0]:.2f}x, "
                      f"optimizer steps/min {pair[1]:.2f}x")  # fmt: skip
    for name, pairs in ratios.items():
        if len(pairs) > 1:
            roll, steps = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            print(f"median of {len(pairs)} rounds {name}/TRL: rollout tokens/s {roll:.2f}x, "
                  f"optimizer steps/min {steps:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
