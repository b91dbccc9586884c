"""Decode speed: lmlab `generate` vs transformers `generate` (and llama.cpp if installed), same run.

    python bench/generate_speed.py [--model smollm2-135m-instruct] [--batch 1 8] [--dtype float32]
        [--new-tokens 32] [--prompt-len 32] [--reps 3] [--compile] [--bf16] [--int8] [--int4]
        [--gguf-native] [--llama-cpp] [--ppl-chars 20000] [--memory] [--only-compiled]

Settings: lmlab float32 (the GGUF dequantized), `--bf16` a bfloat16 copy, `--int8` / `--int4`
weight-only quantized copies (`lmlab.generate.quantize.quantize`, int4 in groups of 32),
`--gguf-native` the GGUF's own blocks kept quantized (`lmlab.load(..., keep_quantized=True)`),
each also through `torch.compile` with `--compile` (`--only-compiled`: the quantized ones only
compiled). `--ppl-chars N`: perplexity of every lmlab setting on tinyshakespeare[:N] (context 512)
and its change vs float32. `--memory`: peak RSS of a fresh process that loads the setting and
decodes (resource.getrusage), and the bytes its weights hold.

Both libraries get the same weights (lmlab's model exported through its name map into a
transformers model in memory) and the same prompts; greedy decoding with EOS disabled so every
run makes exactly `--new-tokens` tokens. Time to first token (TTFT) is a run with one new token;
decode tokens/s per row is (N - 1) / (t(N) - t(1)). Runs alternate between the libraries so
drift in machine load hits both equally; medians are printed with the ratios lmlab / peer.
"""

from __future__ import annotations

import argparse
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


def quality(models: dict, tok, chars: int) -> None:
    """Perplexity of each lmlab setting on the start of tinyshakespeare, change vs the first."""
    from lmlab.eval import perplexity
    from lmlab.paths import data_dir

    text = (data_dir() / "tinyshakespeare.txt").read_text()[:chars]
    base = None
    print(f"\nperplexity on tinyshakespeare[:{chars}] (context 512)")
    for name, m in models.items():
        r = perplexity(m, tok, text, context=512, progress=False)
        base = base or r.ppl
        print(f"  {name:22s} {r.ppl:.4f}  ({100 * (r.ppl / base - 1):+.2f}%)  {r.n_tokens} tokens")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied table counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def build(name: str, model_name: str, dtype: torch.dtype):
    """The lmlab model of one setting: float, bf16, int8, int4 or gguf-native."""
    from lmlab.generate.quantize import quantize

    if name == "gguf-native":
        return lmlab.load(model_name, keep_quantized=True)[0]
    model = lmlab.load(model_name, dtype=torch.bfloat16 if name == "bf16" else dtype)[0]
    if name in ("int8", "int4"):
        quantize(model, kind=name)
    return model


def memory(setting: str, model_name: str, dtype: str, prompt_len: int, n: int) -> None:
    """In a fresh process: load `setting`, decode `n` tokens, print peak RSS and weight bytes."""
    import resource

    model = build(setting, model_name, getattr(torch, dtype))
    prompts = torch.randint(100, 1000, (1, prompt_len))
    generate(model, prompts, max_new_tokens=n, stop_ids=[])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak:.0f} {weight_bytes(model) / 2**20:.0f}")


def memory_table(settings: list[str], args) -> None:
    import subprocess
    import sys

    print("\npeak RSS of a fresh process that loads and decodes (MiB), weights held (MiB)")
    for name in settings:
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype,
             "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
             "--measure-memory", name],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        print(f"  {name:14s} peak RSS {out[-2]:>6s}   weights {out[-1]:>5s}")


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
    p.add_argument("--only-compiled", action="store_true", help="quantized settings only compiled")
    p.add_argument("--bf16", action="store_true", help="also a bfloat16 copy")
    p.add_argument("--int8", action="store_true", help="also lmlab with int8 weight-only linears")
    p.add_argument("--int4", action="store_true", help="also lmlab with int4 (group 32) linears")
    p.add_argument("--gguf-native", action="store_true", help="also the GGUF kept quantized")
    p.add_argument("--ppl-chars", type=int, default=0, help="perplexity on this much text")
    p.add_argument("--memory", action="store_true", help="peak RSS of each setting")
    p.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--llama-cpp", action="store_true", help="also llama.cpp (llama-cpp-python)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_memory:
        memory(args.measure_memory, args.model, args.dtype, args.prompt_len, args.new_tokens)
        return
    dtype = getattr(torch, args.dtype)
    names = ["float"] + [
        n for n, on in (("bf16", args.bf16), ("int8", args.int8), ("int4", args.int4),
                        ("gguf-native", args.gguf_native)) if on
    ]  # fmt: skip
    models = {"float": lmlab.load(args.model, dtype=dtype)[0]}
    tok = lmlab.load(args.model)[1]
    for name in names[1:]:
        models[name] = build(name, args.model, dtype)
    runners = {}
    for name, m in models.items():
        label = "lmlab" if name == "float" else f"lmlab {name}"
        if not (args.only_compiled and name in ("int8", "int4", "gguf-native")):
            runners[label] = lambda x, n, m=m: run_ours(m, x, n)
        if args.compile:
            runners[f"{label}+compile"] = lambda x, n, m=m: run_ours(m, x, n, compile=True)
    if not args.no_hf:
        hf = hf_model(models["float"], dtype)
        runners["transformers"] = lambda x, n: run_hf(hf, x, n)
    if args.llama_cpp:
        import llama_cpp

        from lmlab.packaged import packaged_path

        n_threads = torch.get_num_threads()
        llm = llama_cpp.Llama(
            str(packaged_path(args.model)), n_ctx=512, n_threads=n_threads,
            n_threads_batch=n_threads, verbose=False,
        )  # fmt: skip
        runners["llama.cpp"] = lambda x, n: run_llama_cpp(llm, x, n)
    print(
        f"{args.model} {args.dtype}, {args.prompt_len}-token prompts, {args.new_tokens} new tokens, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, kernels for "
        f"{torch.backends.cpu.get_cpu_capability()}), transformers {transformers.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    peer = "transformers" if "transformers" in runners else None
    for B in args.batch:
        g = torch.Generator().manual_seed(B)
        vocab = models["float"].cfg.vocab_size
        prompts = torch.randint(100, vocab - 100, (B, args.prompt_len), generator=g)
        res = measure(runners, prompts, args.new_tokens, args.reps)
        print(f"\nbatch {B}")
        print(f"  {'':26s} {'TTFT ms':>9s} {'decode tok/s/row':>17s} {'total tok/s':>12s}  vs peer")
        for name, (ttft, dec, tot) in res.items():
            ratio = ""
            if peer and name != peer:
                pd = res[peer][1]
                ratio = f"decode {dec / pd:.2f}x, TTFT {res[peer][0] / ttft:.2f}x faster"
            if "llama.cpp" in res and name.startswith("lmlab"):
                ratio += f"; vs llama.cpp decode {dec / res['llama.cpp'][1]:.2f}x"
            print(f"  {name:26s} {ttft * 1e3:9.1f} {dec:17.1f} {tot:12.1f}  {ratio}")
    if args.ppl_chars:
        quality(models, tok, args.ppl_chars)
    if args.memory:
        memory_table(names, args)


if __name__ == "__main__":
    main()
