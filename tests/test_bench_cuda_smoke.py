"""CPU smoke test of bench/cuda_speed.py (tiny models, eager): every part runs and reports rows
the lead can compare; the budget skips what does not fit and still writes the results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cuda_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cuda_speed", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results(bench, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cuda_speed") / "r.json"
    argv = ["--device", "cpu", "--tiny", "--no-compile", "--out", str(out)]
    assert bench.main(argv) == 0
    assert out.with_suffix(".md").is_file()
    return json.loads(out.read_text())


def rows(results: dict, part: str) -> dict[str, dict]:
    return {r["name"]: r for r in results[part]}


def test_train_compares_the_same_network(results):
    train = rows(results, "train")
    ours, hf = train["lmlab"], train["transformers"]
    assert ours["tok_s"] > 0 and hf["tok_s"] > 0
    # same weights on both sides: the first loss (same batch) agrees up to bf16 rounding
    assert abs(ours["first_loss"] - hf["first_loss"]) < 2e-2
    assert ours["fused_adamw"] and hf["attn"] == "sdpa"
    assert ours["ratio_tok_s"] == pytest.approx(ours["tok_s"] / hf["tok_s"])


def test_decode_rows_generate_the_same_token_count(results):
    decode = [r for r in results["decode"] if "variant" in r]
    assert {r["variant"] for r in decode} == {"lmlab eager", "transformers eager"}
    assert {r["dtype"] for r in decode} == {"bfloat16", "float32"}
    assert all("error" not in r for r in decode), [r.get("error") for r in decode]
    assert all(r["new_tokens"] == 6 and r["tok_s"] > 0 and r["ttft_ms"] > 0 for r in decode)
    assert all("ratio_tok_s" in r for r in decode if r["variant"] == "lmlab eager")


def test_grpo_steps_run(results):
    grpo = rows(results, "grpo")
    for name in ("lmlab eager rollouts, policy", "lmlab eager rollouts, bf16"):
        r = grpo[name]
        assert r["rollout_tok_s"] > 0 and r["steps_per_s"] > 0
        assert r["tokens_per_step"] == 2 * 2 * 6  # G x prompts x new tokens: no early stop
    assert "skipped" in grpo["TRL"]


def test_budget_skips_and_still_writes(bench, tmp_path):
    out = tmp_path / "r.json"
    argv = ["--device", "cpu", "--tiny", "--no-compile", "--budget", "0", "--out", str(out)]
    assert bench.main([*argv, "--parts", "decode", "grpo"]) == 0
    data = json.loads(out.read_text())
    named = [r for part in ("decode", "grpo") for r in data[part] if r["name"] != "TRL"]
    assert named and all(r["skipped"] == "time budget" for r in named)
