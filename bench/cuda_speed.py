"""CUDA speed: lmlab vs transformers on one GPU, in one run: training, decoding, GRPO rollouts.

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 bench/cuda_speed.py --out $OUT/cuda_speed.json \
        2>&1 | tee $OUT/log.txt
    python bench/cuda_speed.py --device cpu --tiny --out /tmp/gpu_smoke.json   # CPU smoke run

Models are random-initialised from lmlab presets (gpt2 = GPT-2 124M, smollm2-135m) and fed
synthetic token ids: no weights, tokenizers or data are needed, and speed does not depend on the
weight values. Where both libraries run a model, transformers builds it from lmlab's HF config
(`lmlab.weights.export.hf_config`) and lmlab copies its weights, so both hold the same network.

1. train: GPT-2 124M (vocab padded to 50304, ctx 1024) as lmlab's gpt2-124m recipe sets it up
   (its TrainConfig, `Trainer`: fused AdamW, bf16 autocast, torch.compile, TF32, grad clip 1.0,
   loss `model(x, targets=y)`) vs `GPT2LMHeadModel` (attn_implementation="sdpa", same loss,
   optimizer and clip, same compile) on one batch shape; tokens/s, ms/step, MFU.
2. decode: greedy decoding, lmlab `generate` (eager and compile=True) vs transformers `generate`
   (eager and cache_implementation="static", which transformers compiles itself on CUDA), bf16
   weights, batch 1 and 8, 32-token prompts, exactly 128 new tokens (no stop token).
3. grpo: lmlab `GRPOTrainer` steps on smollm2-135m (random init) with synthetic prompts; rollout
   tokens/s and steps/s as the trainer measures them, eager / compiled rollouts, policy / bf16.

Each measurement is guarded (an error is printed and recorded; the rest still runs) and must fit
the time budget (`--budget`, seconds for the whole run, by rough cost estimates): what would not
fit is recorded as skipped. Order: the training pair, every eager decode / GRPO row, then the
compiled rows (the first of each part before the rest), then float32 decoding. Results are
printed as markdown tables and written as JSON (rewritten after every measurement, so a cut-off
run keeps what it measured) plus a `.md` next to it.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import traceback
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import transformers

from lmlab.config import Config
from lmlab.families import preset
from lmlab.generate import generate
from lmlab.model import Transformer
from lmlab.recipes.gpt2_124m import default_train
from lmlab.rl import GRPOConfig, GRPOTrainer
from lmlab.rl.config import grpo_train_config
from lmlab.rl.tasks import ArithmeticTask
from lmlab.train.optimizers import param_groups
from lmlab.train.trainer import Trainer
from lmlab.weights.export import hf_config
from lmlab.weights.hf import load_state_dict

DATASHEET_PEAK = 989e12  # H100/H200 SXM dense bf16 FLOP/s (vendor datasheet)
# rough seconds per measurement on an H200 (compile included), to decide what fits the budget
COST = {"decode_eager": 6.0, "decode_compiled": 35.0, "grpo_eager": 15.0, "grpo_compiled": 55.0}
PARTS = ("train", "decode", "grpo")
OPTIONAL = ("trl", "gguf", "tensorboard", "datasets", "peft", "tiktoken")
T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line with wall-clock time and seconds since start (flushed: a cut log is useful)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    print(f"[{now} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds `fn()` takes on `dev` (synchronized before and after), and its result."""
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def free(dev: torch.device) -> None:
    """Drop compiled graphs and cached GPU memory between measurements."""
    torch._dynamo.reset()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mem_gb(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None


class Item:
    """One measurement: a results row of `part` made by `fn()`, about `cost` seconds long."""

    def __init__(self, part: str, name: str, cost: float, fn: Callable, **fields: Any) -> None:
        self.part, self.name, self.cost, self.fn, self.fields = part, name, cost, fn, fields


class Results:
    """Every row measured (or failed / skipped), written as JSON + markdown after each part."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.parts: dict[str, list[dict[str, Any]]] = {}
        self.tables: dict[str, str] = {}

    def add(self, part: str, row: dict[str, Any]) -> None:
        self.parts.setdefault(part, []).append(row)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"meta": self.meta, **self.parts}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        tmp.replace(self.path)
        md = "\n\n".join(f"## {k}\n\n{v}" for k, v in self.tables.items())
        self.path.with_suffix(".md").write_text(meta_md(self.meta) + "\n\n" + md + "\n")


def guarded(res: Results, item: Item) -> None:
    """Run one measurement; an exception is printed and recorded as the row's error."""
    part, name = item.part, item.name
    log(f"{part}: {name} ...")
    try:
        row = {"name": name, **item.fields, **item.fn()}
    except Exception as e:  # one failure must not stop the other measurements
        traceback.print_exc()
        err = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
        row = {"name": name, **item.fields, "error": err}
        log(f"{part}: {name} FAILED: {err}")
    else:
        log(f"{part}: {name} done: {short(row)}")
    res.add(part, row)


def skip(res: Results, part: str, name: str, why: str = "time budget") -> None:
    log(f"{part}: {name} skipped ({why})")
    res.add(part, {"name": name, "skipped": why})


def short(row: dict[str, Any]) -> str:
    keys = [k for k, v in row.items() if isinstance(v, float) and k != "name"][:5]
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys)


def md_table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """Markdown table of `rows`; cols: (key, header, format); errors and skips fill the row."""
    out = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r or "skipped" in r:
            note = f"ERROR {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            out.append(f"| {r['name']} | {note} |" + " |" * (len(cols) - 2))
            continue
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("-" if v is None else format(v, fmt) if fmt else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def meta_md(meta: dict[str, Any]) -> str:
    lines = [f"- {k}: {v}" for k, v in meta.items() if not isinstance(v, dict | list)]
    return "# lmlab CUDA speed\n\n" + "\n".join(lines)


# ---------------------------------------------------------------------------- models


def tiny(cfg: Config, **extra: Any) -> Config:
    """A few-layer version of a preset (the same code paths, CPU-sized)."""
    kv = 2 if cfg.n_kv_heads != cfg.n_heads else 4
    return cfg.replace(
        n_layers=2, d_model=64, n_heads=4, n_kv_heads=kv, head_dim=16, d_ff=128,
        vocab_size=1024, **extra,
    )  # fmt: skip


def hf_twin(model: Transformer, **config: Any) -> torch.nn.Module:
    """The transformers model of `model`'s architecture (from lmlab's HF config, SDPA attention);
    `model` gets its weights, so both hold the same network."""
    d = hf_config(model.cfg)
    kind = d.pop("model_type")
    d.pop("architectures", None)
    hcfg = transformers.AutoConfig.for_model(kind, **d, **config)
    hcfg._attn_implementation = "sdpa"
    hf = transformers.AutoModelForCausalLM.from_config(hcfg, attn_implementation="sdpa")
    load_state_dict(model, hf.state_dict())
    x = torch.randint(0, model.cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((model.eval()(x) - hf.eval()(input_ids=x).logits).abs().max())
    if diff > 1e-3:
        raise RuntimeError(f"{model.cfg.name}: lmlab and transformers logits differ by {diff:.3g}")
    log(f"{model.cfg.name}: same network in both libraries (max logit difference {diff:.1e})")
    return hf


def matmul_rate(dev: torch.device, n: int, iters: int) -> float:
    """Measured bf16 matmul FLOP/s of an n x n x n product."""
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    secs, _ = timed(dev, lambda: [a @ b for _ in range(iters)])
    return 2 * n**3 * iters / secs


# ---------------------------------------------------------------------------- 1. training


class _NoData:
    """The Trainer wants a data source; batches are made here instead (synthetic, on the GPU)."""

    def get_batch(self, *a: Any) -> Any:
        raise RuntimeError("not used")


class HFLoss(torch.nn.Module):
    """transformers' model + the same summed cross-entropy lmlab's `model(x, targets=y)` returns."""

    def __init__(self, hf: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.hf(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")


def train_flops_per_token(model: Transformer, T: int) -> tuple[float, int]:
    """6 N + 12 L d T (PaLM appendix B): N = parameters without position embeddings (the tied
    token embedding counts once, as the LM head matmul), d = n_heads x head_dim."""
    cfg = model.cfg
    n = model.num_params() - (model.pos_embed.weight.numel() if model.pos_embed is not None else 0)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * T, n


def train_items(args, dev: torch.device, res: Results) -> list[Item]:
    """lmlab (the gpt2-124m recipe's setup) and transformers training steps on one model."""
    tc = default_train()  # the gpt2-124m recipe's TrainConfig
    B, T = (2, 64) if args.tiny else (args.train_batch, tc.block_size)
    warm, steps = (1, 2) if args.tiny else (args.warmup, args.steps)
    over = dict(tc.model_overrides)
    if args.tiny:
        over = {"n_layers": 2, "d_model": 64, "n_heads": 2, "vocab_size": 1024}
    tc = tc.replace(
        model_overrides=over, batch_size=B, block_size=T, grad_accum=1, device=str(dev),
        out_dir="", tensorboard=False, progress=False, compile=not args.no_compile,
        max_steps=warm + steps,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(tc.model_config(None if args.tiny else 50257, T))  # as lmlab.train.run
    hf = hf_twin(model, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    fpt, n_params = train_flops_per_token(model, T)
    V = model.cfg.vocab_size
    g = torch.Generator().manual_seed(1)
    batches = [
        (lambda t: (t[:, :-1].to(dev), t[:, 1:].to(dev)))(torch.randint(0, V, (B, T + 1), generator=g))
        for _ in range(4)
    ]  # fmt: skip
    res.meta["train_setup"] = (
        f"{model.cfg.name} L={model.cfg.n_layers} d={model.cfg.d_model} H={model.cfg.n_heads} "
        f"vocab={V}{'' if args.tiny else ' (50257 padded to 50304, as the recipe; both sides)'} "
        f"ctx={T}, batch {B}x{T}, bf16 autocast, "
        f"torch.compile={tc.compile}, fused AdamW, grad clip {tc.grad_clip}, TF32 on, "
        f"{warm} warm-up + {steps} timed steps; flops/token = 6N + 12*L*d*T with N={n_params:,} "
        f"(no position embeddings) = {fpt / 1e6:.1f} MFLOP"
    )
    log(res.meta["train_setup"])
    peaks = {"datasheet": DATASHEET_PEAK, "measured": res.meta.get("matmul_flops")}

    def measure(step: Callable[[Any], torch.Tensor]) -> dict[str, Any]:
        t_warm, first = timed(dev, lambda: [float(step(batches[i % 4])) for i in range(warm)])
        secs, _ = timed(dev, lambda: [step(batches[i % 4]) for i in range(steps)])
        tok_s = steps * B * T / secs
        row = {"tok_s": tok_s, "ms_step": 1000 * secs / steps, "warmup_s": t_warm,
               "first_loss": first[0] / (B * T), "peak_mem_gb": peak_mem_gb(dev)}  # fmt: skip
        for k, p in peaks.items():
            row[f"mfu_{k}"] = tok_s * fpt / p if p else None
        return row

    def lmlab_side() -> dict[str, Any]:
        free(dev)
        trainer = Trainer(model, tc, _NoData())  # moves the model, builds AdamW, compiles
        trainer.net.train()  # as Trainer.fit does
        n = B * T

        def step(batch: Any) -> torch.Tensor:
            trainer.schedule.set(trainer.step)
            with trainer.autocast:
                loss = trainer.task.loss(trainer.net, batch)  # model(x, targets=y, sum)
            (loss / n).backward()
            trainer.optimizer_step()
            trainer.step += 1
            return loss.detach()

        try:
            fused = any(g.get("fused") for g in trainer.optimizer.param_groups)
            return {**measure(step), "fused_adamw": fused}
        finally:
            model.cpu()  # room for the other side

    def hf_side() -> dict[str, Any]:
        free(dev)
        net = HFLoss(hf.to(dev)).train()
        opt = torch.optim.AdamW(
            param_groups(hf, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True
        )
        fwd = torch.compile(net) if tc.compile else net
        n = B * T

        def step(batch: Any) -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = fwd(*batch)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), tc.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        try:
            return {**measure(step), "attn": hf.config._attn_implementation, "fused_adamw": True}
        finally:
            hf.cpu()

    # cost 0: the pair is the point of this part, both run while any time is left
    return [Item("train", "lmlab", 0.0, lmlab_side), Item("train", "transformers", 0.0, hf_side)]


def train_table(res: Results) -> None:
    rows = res.parts.get("train", [])
    named = {r["name"]: r for r in rows}
    a, b = named.get("lmlab", {}), named.get("transformers", {})
    if "tok_s" in a and "tok_s" in b:
        a["ratio_tok_s"] = a["tok_s"] / b["tok_s"]
        res.meta["train_ratio_lmlab_over_transformers"] = a["ratio_tok_s"]
    res.tables["1. training (tokens/s, higher is better; ratio = lmlab / transformers)"] = md_table(
        rows,
        [("name", "library", ""), ("tok_s", "tokens/s", ",.0f"), ("ratio_tok_s", "ratio", ".2f"),
         ("ms_step", "ms/step", ".1f"), ("mfu_datasheet", "MFU vs 989T", ".1%"),
         ("mfu_measured", "MFU vs measured", ".1%"), ("warmup_s", "compile+warm-up s", ".0f"),
         ("first_loss", "first loss", ".3f"), ("peak_mem_gb", "peak GiB", ".1f")],
    )  # fmt: skip


# ---------------------------------------------------------------------------- 2. decoding


def decode_models(args) -> dict[str, Config]:
    cfgs = {"gpt2-124m": preset("gpt2"), "smollm2-135m": preset("smollm2-135m")}
    if args.tiny:
        cfgs = {k: tiny(c, max_seq_len=256) for k, c in cfgs.items()}
    return cfgs


def decode_items(args, dev: torch.device, res: Results) -> tuple[list[Item], ...]:
    """Greedy decoding, lmlab vs transformers: (bf16 eager, bf16 compiled, float32) items, each
    list in priority order."""
    P, N = (8, 6) if args.tiny else (args.prompt_len, args.new_tokens)
    batches = [2] if args.tiny else args.decode_batches
    reps = 1 if args.tiny else 2
    res.meta["decode_setup"] = (
        f"greedy, prompt {P} random ids, exactly {N} new tokens (no stop token; transformers gets "
        f"min_new_tokens={N}), tokens/s = {N} x batch / time of one whole generate call (prefill "
        f"included), best of {reps}; TTFT = a generate call with 1 new token, best of 3; models "
        "random-init (same weights both sides)"
    )
    models = decode_models(args)
    built: dict[tuple[str, str], tuple[Transformer, torch.nn.Module]] = {}

    def pair(m: str, dt: str) -> tuple[Transformer, torch.nn.Module]:
        if (m, dt) not in built:  # kept: a few GB of GPU memory at most, no rebuilding
            torch.manual_seed(0)
            ours = Transformer(models[m])
            hf = hf_twin(ours)
            dtype = getattr(torch, dt)
            built[(m, dt)] = (ours.to(dev, dtype).eval(), hf.to(dev, dtype).eval())
        return built[(m, dt)]

    def item(m: str, dt: str, b: int, variant: str) -> Item:
        kind = "decode_eager" if variant.endswith("eager") else "decode_compiled"
        run = functools.partial(decode_one, dev, pair, m, dt, b, P, N, variant, reps)
        return Item("decode", f"{m} {dt} b{b} {variant}", COST[kind] * (0.1 if args.tiny else 1),
                    run, model=m, dtype=dt, batch=b, variant=variant)  # fmt: skip

    eager, compiled = (
        ("lmlab eager", "transformers eager"),
        ("lmlab compile", "transformers static"),
    )
    first = [item(m, "bfloat16", b, v) for m in models for b in batches for v in eager]
    later = [item(m, "bfloat16", b, v) for b in batches for m in models for v in compiled]
    # float32 weights as time allows (compiled float32 only with --fp32-decode)
    fp32 = [item(m, "float32", b, v) for m in models for b in batches for v in eager]
    if args.fp32_decode:
        fp32 += [item(m, "float32", b, v) for b in batches for m in models for v in compiled]
    if args.no_compile:
        later, fp32 = [], [i for i in fp32 if i.fields["variant"].endswith("eager")]
    return first, later, fp32


def decode_table(res: Results) -> None:
    rows = res.parts.get("decode", [])
    for r in rows:
        if r.get("variant", "").startswith("lmlab") and "tok_s" in r:
            peer = "transformers " + ("eager" if r["variant"].endswith("eager") else "static")
            key = (r["model"], r["dtype"], r["batch"], peer)
            o = next((x for x in rows if "tok_s" in x and
                      (x["model"], x["dtype"], x["batch"], x["variant"]) == key), None)  # fmt: skip
            if o is not None:
                r["ratio_tok_s"] = r["tok_s"] / o["tok_s"]
    title = "2. decoding (new tokens/s, higher is better; ratio = lmlab / transformers)"
    res.tables[title] = md_table(
        rows,
        [("name", "run", ""), ("tok_s", "tokens/s", ",.0f"), ("ratio_tok_s", "ratio vs peer", ".2f"),
         ("ms_token", "ms/new token", ".2f"), ("ttft_ms", "TTFT ms", ".1f"),
         ("warmup_s", "first call s", ".1f"), ("compiled", "compiled", "")],
    )  # fmt: skip


def decode_one(
    dev: torch.device, pair: Callable, m: str, dt: str, B: int, P: int, N: int, variant: str,
    reps: int,
) -> dict[str, Any]:  # fmt: skip
    """Time one generate setting of model `m` in dtype `dt` (`pair` builds both libraries'
    models): a warm-up call (compiles), `reps` timed calls, then TTFT calls."""
    ours, hf = pair(m, dt)
    V = ours.cfg.vocab_size
    prompts = torch.randint(3, V, (B, P), generator=torch.Generator().manual_seed(B))
    compile_ = variant != "lmlab eager" and variant != "transformers eager"
    if variant.startswith("lmlab"):

        def run(n: int) -> int:
            out = generate(ours, prompts, max_new_tokens=n, stop_ids=[], compile=compile_)
            return min(map(len, out.sequences))
    else:
        ids, mask = prompts.to(dev), torch.ones(B, P, dtype=torch.long, device=dev)
        extra = {"cache_implementation": "static"} if compile_ else {}

        def run(n: int) -> int:
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0, **extra)  # fmt: skip
            return out.shape[1] - P

    # compiled runs warm up at full length (the cache length is part of the compiled shapes)
    t_warm, _ = timed(dev, lambda: run(N if compile_ else min(N, 16)))
    times, got = [], N
    for _ in range(reps):
        secs, got = timed(dev, lambda: run(N))
        times.append(secs)
    if got != N:
        raise RuntimeError(
            f"generated {got} tokens per row, expected {N}: the runs are not comparable"
        )
    ttft = min(timed(dev, lambda: run(1))[0] for _ in range(3))
    best = min(times)
    row = {"tok_s": N * B / best, "ms_token": 1000 * best / N, "ttft_ms": 1000 * ttft,
           "warmup_s": t_warm, "times_s": times, "new_tokens": got}  # fmt: skip
    if variant == "transformers static":
        row["compiled"] = "yes" if hasattr(hf, "_compiled_call") else "no (eager static cache)"
    elif variant == "lmlab compile":
        row["compiled"] = "yes"
    return row


# ---------------------------------------------------------------------------- 3. GRPO


class IdTokenizer:
    """Stand-in tokenizer (the GPU machine has no tokenizer files): ids <-> space-separated numbers."""

    eos_id = bos_id = pad_id = chat_template = None
    special_tokens: ClassVar[dict[str, int]] = {}

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        return [3 + b for b in text.encode()]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return " ".join(map(str, ids))


def grpo_one(args, dev: torch.device, compile_: bool, precision: str) -> dict[str, Any]:
    G, prompts, N = (2, 2, 6) if args.tiny else (args.group, args.prompts, args.grpo_tokens)
    steps = 1 if args.tiny else args.grpo_steps
    free(dev)
    cfg_model = preset("smollm2-135m")
    if args.tiny:
        cfg_model = tiny(cfg_model)
    torch.manual_seed(0)
    model = Transformer(cfg_model)
    task = ArithmeticTask(n_train=64, n_test=1)
    cfg = GRPOConfig(
        model="smollm2-135m (random init)", compile=compile_, rollout_precision=precision,
        num_generations=G, prompts_per_step=prompts, micro_batch_size=G * prompts,
        max_new_tokens=N, beta=0.0, loss_type="dapo", temperature=1.0, eval_size=0,
        train=grpo_train_config(lr=1e-6, max_steps=steps + 1, out_dir="", seed=0,
                                device=str(dev), dtype="float32", progress=False),
    )  # fmt: skip
    trainer = GRPOTrainer(model, IdTokenizer(), cfg, task)
    trainer.stop_ids = []  # no stop token: every completion has exactly N tokens
    # synthetic prompts: a shared 48-token "system prompt" + 16 tokens of each problem
    V = cfg_model.vocab_size
    shared = torch.randint(3, V, (48,), generator=torch.Generator().manual_seed(0)).tolist()

    def encode(rows: list[dict[str, Any]]) -> list[list[int]]:
        own = [torch.Generator().manual_seed(zlib.crc32(r["prompt"].encode())) for r in rows]
        return [shared + torch.randint(3, V, (16,), generator=g).tolist() for g in own]

    trainer.encode = encode
    t_warm, _ = timed(dev, trainer.step)  # warm-up (and compilation of the rollout step)
    recs, wall = [], 0.0
    for _ in range(steps):
        secs, rec = timed(dev, trainer.step)
        recs.append(rec)
        wall += secs
    toks = sum(r["rollout_tokens"] for r in recs)
    t_roll = sum(r["rollout_tokens"] / r["rollout_tok_s"] for r in recs)
    return {"rollout_tok_s": toks / t_roll, "steps_per_s": steps / wall,
            "tokens_per_step": toks / steps, "rollout_share": t_roll / wall, "warmup_s": t_warm,
            "peak_mem_gb": peak_mem_gb(dev)}  # fmt: skip


def grpo_items(args, dev: torch.device, res: Results) -> tuple[list[Item], list[Item]]:
    """(eager items, compiled items) of lmlab GRPO steps."""
    G, prompts, N = (2, 2, 6) if args.tiny else (args.group, args.prompts, args.grpo_tokens)
    steps = 1 if args.tiny else args.grpo_steps
    res.meta["grpo_setup"] = (
        f"lmlab GRPOTrainer.step() on smollm2-135m (random init, float32 master weights), G={G}, "
        f"{prompts} prompts/step (48 shared + 16 own synthetic ids), {N} new tokens (stop token "
        f"ignored), loss dapo, beta 0, 1 warm-up + {steps} timed steps; rollout tokens/s as the "
        "trainer measures it (completion tokens / time inside rollout)"
    )

    def item(compile_: bool, precision: str) -> Item:
        cost = COST["grpo_compiled" if compile_ else "grpo_eager"] * (0.1 if args.tiny else 1)
        name = f"lmlab {'compiled' if compile_ else 'eager'} rollouts, {precision}"
        return Item("grpo", name, cost, functools.partial(grpo_one, args, dev, compile_, precision))

    if importlib.util.find_spec("trl") is None:
        skip(res, "grpo", "TRL", "trl is not installed")
    else:
        skip(res, "grpo", "TRL", "trl is installed, but its path needs a real tokenizer and "
             "dataset: run bench/grpo_speed.py --only trl with a packaged model")  # fmt: skip
    first = [item(False, "policy"), item(False, "bf16")]
    later = [] if args.no_compile else [item(True, "bf16"), item(True, "policy")]
    return first, later


def grpo_table(res: Results) -> None:
    res.tables["3. GRPO (lmlab only)"] = md_table(
        res.parts.get("grpo", []),
        [("name", "run", ""), ("rollout_tok_s", "rollout tokens/s", ",.0f"),
         ("steps_per_s", "steps/s", ".3f"), ("tokens_per_step", "tokens/step", ".0f"),
         ("rollout_share", "rollout share", ".0%"), ("warmup_s", "warm-up step s", ".1f"),
         ("peak_mem_gb", "peak GiB", ".1f")],
    )  # fmt: skip


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    out = os.path.join(os.environ["OUT"], "cuda_speed.json") if os.environ.get("OUT") else None
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 2 steps: a CPU smoke run")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--out", default=out or "/tmp/cuda_speed.json", help="JSON results path")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (default 330; --tiny: no limit); measurements "
                    "that would not fit are skipped")  # fmt: skip
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3, help="train warm-up (compile) steps")
    ap.add_argument("--steps", type=int, default=10, help="timed train steps")
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--fp32-decode", action="store_true",
                    help="also compiled decoding with float32 weights (eager float32 runs if time allows)")  # fmt: skip
    ap.add_argument("--group", type=int, default=16, help="GRPO num_generations")
    ap.add_argument("--prompts", type=int, default=2, help="GRPO prompts per step")
    ap.add_argument("--grpo-tokens", type=int, default=128, help="GRPO completion length")
    ap.add_argument("--grpo-steps", type=int, default=2, help="timed GRPO steps")
    ap.add_argument("--no-compile", action="store_true", help="skip every compiled measurement")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.budget is None:
        args.budget = 1e9 if args.tiny else 330.0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print(f"--device {args.device}: CUDA is not available here; use --device cpu --tiny")
            return 2
        # with an index: torch.cuda.set_device (here and in lmlab/train/distributed.py setup,
        # which the Trainer calls with str(dev)) refuses a bare "cuda"
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
        # the legacy flags, as lmlab's Trainer sets them (mixing them with the new
        # fp32_precision API is an error in recent torch)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "tiny": args.tiny, "budget_s": args.budget,
        "weights": "random init (speed does not depend on weight values); synthetic token ids",
        "optional_packages": {m: importlib.util.find_spec(m) is not None for m in OPTIONAL},
        "skip_guard_fn": hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"),
        "argv": " ".join(sys.argv),
    }  # fmt: skip
    res = Results(Path(args.out), meta)
    for k, v in meta.items():
        log(f"{k}: {v}")
    if not meta["skip_guard_fn"]:
        log("note: torch.compiler.skip_guard_on_all_nn_modules_unsafe is missing: lmlab's compiled "
            "decoding (lmlab/generate/compiled.py) will fail on this torch")  # fmt: skip
    n, iters = (256, 3) if args.tiny or dev.type == "cpu" else (8192, 50)
    try:
        meta["matmul_flops"] = matmul_rate(dev, n, iters)
        log(f"bf16 matmul {n}^3: {meta['matmul_flops'] / 1e12:.1f} TFLOP/s measured "
            f"(datasheet {DATASHEET_PEAK / 1e12:.0f})")  # fmt: skip
    except Exception as e:  # MFU against the datasheet peak still works
        log(f"bf16 matmul rate FAILED: {type(e).__name__}: {e}")
    end = T0 + args.budget

    def finish() -> None:
        for part, table in (("train", train_table), ("decode", decode_table), ("grpo", grpo_table)):
            if part in args.parts:
                table(res)
        res.save()

    def run(items: list[Item]) -> None:
        for item in items:
            if time.perf_counter() + item.cost > end:
                skip(res, item.part, item.name)
            else:
                guarded(res, item)
            finish()

    def plan(part: str, build: Callable) -> Any:
        """The part's lists of items (its setup may build models); empty ones when the part is
        not asked for or its setup fails."""
        if part not in args.parts:
            return [], [], []
        try:
            return build(args, dev, res)
        except Exception as e:  # setup failed: record it and go on with the other parts
            traceback.print_exc()
            res.add(part, {"name": f"{part} setup", "error": f"{type(e).__name__}: {e}"[:300]})
            return [], [], []

    # priority: the training pair, then every eager row, then compiled rows interleaved so that
    # each part gets its most telling compiled numbers before the rest (the budget skips the tail)
    log("=== train")
    run(plan("train", lambda *a: (train_items(*a),))[0])
    log("=== eager decoding and GRPO, then compiled ones")
    d_eager, d_compiled, d_fp32 = plan("decode", decode_items)
    g_eager, g_compiled = plan("grpo", grpo_items)[:2]
    run(d_eager + g_eager + d_compiled[:2] + g_compiled[:1] + d_compiled[2:] + g_compiled[1:])
    run(d_fp32)
    free(dev)
    meta["total_s"] = time.perf_counter() - T0
    finish()
    print("\n" + meta_md(meta) + "\n")
    for title, table in res.tables.items():
        print(f"## {title}\n\n{table}\n", flush=True)
    log(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
