"""Decode speed: lmlab `generate` vs transformers `generate` (and llama.cpp if installed), same run.

    python bench/generate_speed.py [--model smollm2-135m-instruct] [--batch 1 8] [--dtype float32]
        [--new-tokens 32] [--prompt-len 32] [--reps 3] [--compile] [--int8] [--llama-cpp]

Both libraries get the same weights (lmlab's model exported through its name map into a
transformers model in memory) and the same prompts; greedy decoding with EOS disabled so every
run makes exactly `--new-tokens` tokens. Time to first token (TTFT) is a run with one new token;
decode tokens/s per row is (N - 1) / (t(N) - t(1)). Runs alternate between the libraries so
drift in machine load hits both equally; medians are printed with the ratios lmlab / peer.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import transformers

import lmlab
from lmlab.generate import generate
from lmlab.weights.export import check_exportable
from lmlab.weights.hf import lmlab_to_hf


def hf_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A transformers model with the same weights as the lmlab `model`."""
    d = dict(check_exportable(model.cfg))
    hc = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    hf = transformers.AutoModelForCausalLM.from_config(hc, dtype=torch.float32)
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("unembed.weight", None)
    missing, unexpected = hf.load_state_dict(lmlab_to_hf(sd, model.cfg), strict=False)
    if unexpected or any("lm_head" not in k and "rotary" not in k for k in missing):
        raise RuntimeError(f"weight transfer failed: missing {missing}, unexpected {unexpected}")
    return hf.to(dtype).eval()


def run_ours(model, prompts: torch.Tensor, n: int, compile: bool = False) -> float:
    t0 = time.perf_counter()
    out = generate(model, prompts, max_new_tokens=n, stop_ids=[], compile=compile)
    assert all(len(s) == n for s in out.sequences)
    return time.perf_counter() - t0


@torch.no_grad()
def run_hf(model, prompts: torch.Tensor, n: int) -> float:
    t0 = time.perf_counter()
    out = model.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n, min_new_tokens=n,
        do_sample=False, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    assert out.shape[1] == prompts.shape[1] + n
    return time.perf_counter() - t0


def run_llama_cpp(llm, prompts: torch.Tensor, n: int) -> float:
    t0 = time.perf_counter()
    for row in prompts.tolist():  # llama-cpp-python decodes one sequence at a time
        llm.reset()
        for made, _ in enumerate(llm.generate(row, temp=0.0, top_k=1, reset=True), 1):
            if made == n:
                break
    return time.perf_counter() - t0


def measure(runners: dict, prompts: torch.Tensor, n: int, reps: int) -> dict[str, tuple]:
    """{name: (ttft_s, decode_tok_s_per_row, total_tok_s)} medians over `reps` alternating runs."""
    first: dict[str, list] = {k: [] for k in runners}
    full: dict[str, list] = {k: [] for k in runners}
    for fn in runners.values():  # warm-up (and compilation)
        fn(prompts, 2)
    for _ in range(reps):
        for name, fn in runners.items():
            first[name].append(fn(prompts, 1))
            full[name].append(fn(prompts, n))
    out = {}
    B = prompts.shape[0]
    for name in runners:
        t1, tn = statistics.median(first[name]), statistics.median(full[name])
        out[name] = (t1, (n - 1) / max(tn - t1, 1e-9), B * n / tn)
    return out


def quality(model, tok, quantized: dict, chars: int) -> None:
    """Perplexity of the float model and each quantized one on the start of tinyshakespeare."""
    from lmlab.eval import perplexity
    from lmlab.paths import data_dir

    text = (data_dir() / "tinyshakespeare.txt").read_text()[:chars]
    base = perplexity(model, tok, text, context=512, progress=False)
    print(f"perplexity on tinyshakespeare[:{chars}] ({base.n_tokens} tokens, context 512)")
    print(f"  {'float':14s} {base.ppl:.4f}")
    for name, m in quantized.items():
        r = perplexity(m, tok, text, context=512, progress=False)
        print(f"  {name:14s} {r.ppl:.4f}  ({100 * (r.ppl / base.ppl - 1):+.2f}%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also lmlab with generate(compile=True)")
    p.add_argument("--int8", action="store_true", help="also lmlab with int8 weight-only linears")
    p.add_argument(
        "--ppl-chars",
        type=int,
        default=0,
        help="with --int8: perplexity on this much tinyshakespeare",
    )
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--llama-cpp", action="store_true", help="also llama.cpp (llama-cpp-python)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, tok = lmlab.load(args.model, dtype=dtype)
    runners = {"lmlab": lambda x, n: run_ours(model, x, n)}
    if args.compile:
        runners["lmlab+compile"] = lambda x, n: run_ours(model, x, n, compile=True)
    if args.int8:
        from lmlab.generate.quantize import quantize_int8

        q8 = quantize_int8(copy.deepcopy(model), kind="int8")
        qd = quantize_int8(copy.deepcopy(model), kind="int8-dynamic")
        runners["lmlab+int8"] = lambda x, n: run_ours(q8, x, n)
        if args.compile:
            runners["lmlab+int8+compile"] = lambda x, n: run_ours(q8, x, n, compile=True)
        runners["lmlab+int8-dyn"] = lambda x, n: run_ours(qd, x, n)
        if args.ppl_chars:
            quality(model, tok, {"int8": q8, "int8-dynamic": qd}, args.ppl_chars)
    if not args.no_hf:
        hf = hf_model(model, dtype)
        runners["transformers"] = lambda x, n: run_hf(hf, x, n)
    if args.llama_cpp:
        import llama_cpp

        from lmlab.packaged import packaged_path

        llm = llama_cpp.Llama(
            str(packaged_path(args.model)), n_ctx=512, n_threads=torch.get_num_threads(),
            verbose=False,
        )  # fmt: skip
        runners["llama.cpp"] = lambda x, n: run_llama_cpp(llm, x, n)
    print(
        f"{args.model} {args.dtype}, {args.prompt_len}-token prompts, {args.new_tokens} new tokens, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}, {platform.processor() or platform.machine()}"
    )
    peer = "transformers" if "transformers" in runners else None
    for B in args.batch:
        g = torch.Generator().manual_seed(B)
        prompts = torch.randint(100, model.cfg.vocab_size - 100, (B, args.prompt_len), generator=g)
        res = measure(runners, prompts, args.new_tokens, args.reps)
        print(f"\nbatch {B}")
        print(f"  {'':20s} {'TTFT ms':>9s} {'decode tok/s/row':>17s} {'total tok/s':>12s}  vs peer")
        for name, (ttft, dec, tot) in res.items():
            ratio = ""
            if peer and name != peer:
                pd = res[peer][1]
                ratio = f"decode {dec / pd:.2f}x, TTFT {res[peer][0] / ttft:.2f}x faster"
            if "llama.cpp" in res and name.startswith("lmlab"):
                ratio += f"; vs llama.cpp decode {dec / res['llama.cpp'][1]:.2f}x"
            print(f"  {name:20s} {ttft * 1e3:9.1f} {dec:17.1f} {tot:12.1f}  {ratio}")


if __name__ == "__main__":
    main()
