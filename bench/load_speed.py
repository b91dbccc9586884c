"""Time to a ready model from a GGUF file: `lmlab.load` vs transformers' GGUF loader (float32),
or with `--keep-quantized`, lmlab's float32 load vs its `keep_quantized=True` load.

Default: same process, alternating repetitions (lmlab, transformers, lmlab, ...), after one
untimed warm-up of each so imports and the page cache do not count. lmlab's time includes
rebuilding the tokenizer from the GGUF vocabulary; transformers' does not (model only).

--keep-quantized: every load runs in a fresh process (float, kept, float, ...; one untimed
warm-up of each first, for the page cache), so each reports its own peak RSS (ru_maxrss: the
process's peak, imports included; `+load` is the growth during the load). Imports and lmlab's
one-time CPU kernel probes run before the clock starts, in both.

    python bench/load_speed.py [--model smollm2-135m-instruct] [--reps 3] [--keep-quantized]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch


def _lmlab(path: Path) -> float:
    import lmlab

    t = time.perf_counter()
    model, _ = lmlab.load(path, dtype=torch.float32)
    dt = time.perf_counter() - t
    assert model.embed.weight.dtype == torch.float32
    return dt


def _transformers(path: Path) -> float:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    model.eval()
    dt = time.perf_counter() - t
    assert model.get_input_embeddings().weight.dtype == torch.float32
    return dt


def _child(kind: str, path: Path) -> None:
    """One load in this fresh process; prints its time and peak RSS as JSON."""
    import lmlab
    from lmlab import kernels
    from lmlab.weights import gguf, gguf_quantized, hf, load  # noqa: F401  (imports off the clock)

    kernels.available()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    model, _ = lmlab.load(path, dtype=torch.float32, keep_quantized=kind == "kept")
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = sum(type(m).__name__ in ("Int4Linear", "Int8Linear") for m in model.modules())
    assert (kept > 0) == (kind == "kept"), kept
    print(json.dumps({"s": dt, "peak_mib": peak, "load_mib": peak - before}))


def _spawn(kind: str, path: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--model", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"{kind} load failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _keep_quantized(path: Path, reps: int) -> None:
    kinds = ("float", "kept")
    for kind in kinds:  # warm-up: page cache
        _spawn(kind, path)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(reps):
        for kind in kinds:
            runs[kind].append(_spawn(kind, path))
        line = ", ".join(
            f"{k} {runs[k][-1]['s']:.2f} s / peak {runs[k][-1]['peak_mib']:.0f} MiB" for k in kinds
        )
        print(f"rep {r + 1}: {line}", flush=True)
    best = {k: {m: min(x[m] for x in runs[k]) for m in runs[k][0]} for k in kinds}
    for k in kinds:
        b = best[k]
        print(
            f"min {k:5s}: {b['s']:.2f} s, peak RSS {b['peak_mib']:.0f} MiB "
            f"(+{b['load_mib']:.0f} MiB during the load)"
        )
    f, q = best["float"], best["kept"]
    print(
        f"kept / float: time {q['s'] / f['s']:.2f}x, peak RSS {q['peak_mib'] / f['peak_mib']:.2f}x"
    )


def main() -> None:
    from lmlab.packaged import packaged_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="smollm2-135m-instruct", help="packaged model name or .gguf path"
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--keep-quantized",
        action="store_true",
        help="compare lmlab's float32 load with keep_quantized=True (fresh process each)",
    )
    ap.add_argument("--child", choices=("float", "kept"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = Path(args.model) if args.model.endswith(".gguf") else packaged_path(args.model)
    if path is None or not path.is_file():
        raise SystemExit(
            f"{args.model}: no GGUF file; install the package (see DEVELOPERS.md) or pass a .gguf"
        )
    warnings.filterwarnings("ignore")
    if args.child:
        return _child(args.child, path)
    print(
        f"{path.name} ({path.stat().st_size / 2**20:.0f} MiB), torch threads {torch.get_num_threads()}"
    )
    if args.keep_quantized:
        return _keep_quantized(path, args.reps)
    _lmlab(path), _transformers(path)  # warm-up: imports, page cache
    gc.collect()
    ours, theirs = [], []
    for r in range(args.reps):
        ours.append(_lmlab(path))
        gc.collect()
        theirs.append(_transformers(path))
        gc.collect()
        print(f"rep {r + 1}: lmlab {ours[-1]:.2f} s, transformers {theirs[-1]:.2f} s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"median: lmlab {a:.2f} s, transformers {b:.2f} s -> lmlab is {b / a:.1f}x faster")


if __name__ == "__main__":
    main()
