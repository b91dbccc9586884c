"""Time to a ready float32 model from a GGUF file: `lmlab.load` vs transformers' GGUF loader.

Same process, alternating repetitions (lmlab, transformers, lmlab, ...), after one untimed
warm-up of each so imports and the page cache do not count. lmlab's time includes rebuilding
the tokenizer from the GGUF vocabulary; transformers' does not (model only).

    python bench/load_speed.py [--model smollm2-135m-instruct] [--reps 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
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


def main() -> None:
    from lmlab.packaged import packaged_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="smollm2-135m-instruct", help="packaged model name or .gguf path"
    )
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    path = Path(args.model) if args.model.endswith(".gguf") else packaged_path(args.model)
    if path is None or not path.is_file():
        raise SystemExit(
            f"{args.model}: no GGUF file; install the package (see DEVELOPERS.md) or pass a .gguf"
        )
    warnings.filterwarnings("ignore")
    print(
        f"{path.name} ({path.stat().st_size / 2**20:.0f} MiB), torch threads {torch.get_num_threads()}"
    )
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
