"""Perplexity cost of each quantized setting vs float32, and peak memory of a GGUF load kept
quantized vs dequantized (SmolLM2-135M-Instruct, its packaged Q4_1 GGUF).

    python bench/quant_quality.py                  # perplexity table (tinyshakespeare[:20000])
    python bench/quant_quality.py --rss            # peak RSS of both loads, each in a subprocess

Perplexity as docs/BENCHMARKS.md's int8 table: `perplexity(model, tok, text, context=512)`. The
float32 baseline is the GGUF dequantized to float32 (`lmlab.load`); int8 / int4 quantize that
model (`lmlab.generate.quantize.quantize`); "GGUF-native Q4_1" keeps the file's blocks
(`lmlab.load(..., keep_quantized=True)`).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

MODEL = "smollm2-135m-instruct"

_RSS_CHILD = """
import json, resource, sys, time
import lmlab
t = time.perf_counter()
model, _ = lmlab.load(sys.argv[1], keep_quantized=sys.argv[2] == "kept")
took = time.perf_counter() - t
held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tensor_mb": held / 2**20, "load_s": took}))
"""


def rss() -> None:
    """Peak RSS of a fresh process that only loads the model, kept quantized vs dequantized."""
    from lmlab.packaged import packaged_path

    path = packaged_path(MODEL)
    size = path.stat().st_size / 2**20 if path else float("nan")
    probe = "import lmlab, resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    base = int(out.stdout) / 1024
    print(f"{MODEL}: GGUF file {size:.1f} MiB; `import lmlab` alone peaks at {base:.0f} MiB")
    print(f"{'load':28s} {'peak RSS':>10s} {'tensors held':>13s} {'load time':>10s}")
    for how in ("kept", "float32"):
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, MODEL, how],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        r = json.loads(out.strip().splitlines()[-1])
        label = "keep_quantized=True" if how == "kept" else "dequantized (default)"
        print(f"{label:28s} {r['peak_rss_mb']:8.0f} MiB {r['tensor_mb']:9.0f} MiB "
              f"{r['load_s']:8.1f} s")  # fmt: skip


def quality(chars: int, only: list[str] | None = None) -> None:
    import lmlab
    from lmlab.eval import perplexity
    from lmlab.generate.quantize import quantize
    from lmlab.paths import data_dir

    text = (data_dir() / "tinyshakespeare.txt").read_text()[:chars]
    model, tok = lmlab.load(MODEL)

    def q(**kw):
        return lambda: quantize(copy.deepcopy(model), **kw)

    settings = {
        "int8 (per channel)": q(kind="int8"),
        "GGUF-native Q4_1": lambda: lmlab.load(MODEL, keep_quantized=True)[0],
        "int4 g32, int8 head": q(kind="int4", group_size=32),
        "int4 g64, int8 head": q(kind="int4", group_size=64),
        "int4 g128, int8 head": q(kind="int4", group_size=128),
        "int4 g32, int4 head too": q(kind="int4", group_size=32, unembed_kind="int4"),
    }
    only = set(only or settings)
    settings = {k: v for k, v in settings.items() if k in only}
    t = time.perf_counter()
    base = perplexity(model, tok, text, context=512, progress=False)
    print(f"perplexity on tinyshakespeare[:{chars}] ({base.n_tokens} tokens, context 512)")
    print(f"  {'float32 (GGUF dequantized)':28s} {base.ppl:.4f}  ({time.perf_counter() - t:.0f} s)")
    for name, build in settings.items():
        t = time.perf_counter()
        r = perplexity(build(), tok, text, context=512, progress=False)
        change = 100 * (r.ppl / base.ppl - 1)
        print(f"  {name:28s} {r.ppl:.4f}  ({change:+.2f}%)  ({time.perf_counter() - t:.0f} s)",
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ppl-chars", type=int, default=20000, help="tinyshakespeare characters")
    ap.add_argument("--rss", action="store_true", help="measure peak RSS of the two loads instead")
    ap.add_argument("--only", nargs="*", help="settings to run, named as printed")
    args = ap.parse_args()
    if args.rss:
        rss()
    else:
        quality(args.ppl_chars, args.only)
    print(
        f"(this process peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
