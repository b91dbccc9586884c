"""run_with_cache speed and memory: lmlab vs TransformerLens TransformerBridge on SmolLM2-135M.

Same process, same weights, same tokens (batch 4 x 128). Reports time and peak extra resident
memory of caching every hook in both libraries, and lmlab's one-layer cache vs a plain forward.
Peak memory is sampled from /proc/self/statm every millisecond while the call runs; the script
re-executes itself with MALLOC_MMAP_THRESHOLD_ fixed so freed tensors go back to the OS and each
call's peak is visible in the resident size.

    python bench/interp_speed.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds, max peak extra RSS in MiB) over `repeats` calls; results are dropped at once."""
    times, peaks = [], []
    for _ in range(repeats):
        base, peak, stop = rss(), [0], threading.Event()

        def sample(peak: list[int] = peak, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)

        t = threading.Thread(target=sample)
        t.start()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        stop.set()
        t.join()
        peaks.append((max(peak[0], rss()) - base) / 2**20)
        del out
    return statistics.median(times), max(peaks)


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lmlab.interp import run_with_cache
    from lmlab.interp.models import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference lives in tests/
    from tests.tl_reference import boot_bridge

    model, _ = load_model("smollm2-135m-instruct")
    bridge = boot_bridge()
    tokens = torch.randint(
        100,
        model.cfg.vocab_size,
        (args.batch, args.seq),
        generator=torch.Generator().manual_seed(0),
    )
    mid = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    # TransformerLens computes per-head results only when asked (use_attn_result); so do we (hook_result,
    # or ActivationCache.stack_head_results from z), so "all hooks" leaves them out on both sides.
    every = [n for n in model.hook_names() if not n.endswith("attn.hook_result")]

    small = tokens[:1, :16]
    with torch.no_grad():
        model(tokens), bridge(tokens)  # warm up
        small_rows = {
            "lmlab cache all hooks": measure(
                lambda: run_with_cache(model, small, names_filter=every), 5
            ),
            "TL bridge cache all hooks": measure(lambda: bridge.run_with_cache(small), 5),
        }
        rows = {
            "lmlab plain forward": measure(lambda: model(tokens), args.repeats),
            "lmlab cache 1 layer resid": measure(
                lambda: run_with_cache(model, tokens, names_filter=mid), args.repeats
            ),
            "lmlab cache 1 layer, stop early": measure(
                lambda: run_with_cache(model, tokens, names_filter=mid, stop_at_layer="auto"),
                args.repeats,
            ),
            "lmlab cache all hooks": measure(
                lambda: run_with_cache(model, tokens, names_filter=every), args.repeats
            ),
            "lmlab cache all + per-head results": measure(
                lambda: run_with_cache(model, tokens), args.repeats
            ),
            "TL bridge cache all hooks": measure(
                lambda: bridge.run_with_cache(tokens), args.repeats
            ),
        }
    n_ours = len(run_with_cache(model, tokens[:1, :8], names_filter=every)[1])
    n_tl = len(bridge.run_with_cache(tokens[:1, :8])[1].keys())
    print(
        f"SmolLM2-135M, batch {args.batch} x {args.seq}, {args.threads} thread(s), median of {args.repeats}"
    )
    print(f"hooks cached: lmlab {n_ours}, TransformerBridge {n_tl}")
    print(f"{'':34s} {'time s':>8s} {'peak MiB':>9s}")
    for k, (t, m) in rows.items():
        print(f"{k:34s} {t:8.3f} {m:9.0f}")
    ours, tl = rows["lmlab cache all hooks"], rows["TL bridge cache all hooks"]
    plain, one = rows["lmlab plain forward"], rows["lmlab cache 1 layer resid"]
    print(
        f"all hooks: lmlab is {tl[0] / ours[0]:.2f}x faster than TransformerBridge, "
        f"uses {tl[1] / max(ours[1], 1):.2f}x less peak memory"
    )
    print(f"one-layer cache / plain forward: {one[0] / plain[0]:.3f}x time")
    a, b = small_rows["lmlab cache all hooks"], small_rows["TL bridge cache all hooks"]
    print(
        f"batch 1 x 16 (overhead-bound), all hooks: lmlab {a[0]:.3f} s, TL {b[0]:.3f} s: {b[0] / a[0]:.2f}x"
    )


if __name__ == "__main__":
    main()
