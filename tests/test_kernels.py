"""Optional CPU kernels: probed, forced off by LMLAB_KERNELS=plain, reported by `lmlab doctor`,
and bf16 decoding / GRPO on an AVX2-only CPU (simulated by capping oneDNN) take the plain path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_paths import AVX2_ONLY, spy

from lmlab import kernels
from lmlab.data.tasks.addition import CHARS
from lmlab.errors import InputError
from lmlab.families import preset
from lmlab.generate import packed
from lmlab.model import Transformer
from lmlab.rl import GRPOConfig, GRPOTrainer, rollout
from lmlab.rl.config import grpo_train_config
from lmlab.rl.tasks import RLTask
from lmlab.tokenizers.char import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_probes():
    """Probe again in each test (some replace the probes) and after it."""
    kernels.reset()
    yield
    kernels.reset()


def tiny(dtype: torch.dtype = torch.float32) -> Transformer:
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
    return Transformer(cfg).to(dtype)


def lmlab_env(**extra: str) -> dict[str, str]:
    """This process's environment without LMLAB_KERNELS, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != kernels.ENV}
    return {**env, **extra}


def test_available_follows_the_probes_and_plain_forces_all_off(monkeypatch):
    monkeypatch.delenv(kernels.ENV, raising=False)
    probed = kernels.probe()
    assert set(probed) == set(kernels.NAMES) == set(kernels.USES) == set(kernels.FALLBACKS)
    avail = kernels.available()
    assert all(getattr(avail, n) == (probed[n] == "") for n in kernels.NAMES)
    assert kernels.reasons() == probed
    monkeypatch.setenv(kernels.ENV, "plain")  # read at each call: no reset needed
    assert kernels.forced_plain() and not any(vars(kernels.available()).values())
    assert set(kernels.reasons().values()) == {"forced off by LMLAB_KERNELS=plain"}
    monkeypatch.setenv(kernels.ENV, "auto")
    assert kernels.available() == avail


def test_bad_switch_value_names_the_choices(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(InputError, match=r"LMLAB_KERNELS='fast': use 'plain'.*'auto'"):
        kernels.available()


def test_a_failing_or_wrong_kernel_is_not_used(monkeypatch):
    """A probe that raises (as oneDNN's bf16 reorder does on AVX2-only CPUs) or computes a wrong
    result turns its kernel off, with the reason; packing then leaves the linears plain."""
    monkeypatch.delenv(kernels.ENV, raising=False)

    def raises() -> None:
        raise RuntimeError("bf16 path needs the cpu support avx512bw\nmore detail")

    def wrong() -> None:
        kernels._expect(torch.zeros(4), torch.ones(4), 0.1)

    monkeypatch.setitem(kernels.PROBES, "packed_bf16", raises)
    monkeypatch.setitem(kernels.PROBES, "packed_fp32", wrong)
    kernels.reset()
    avail, why = kernels.available(), kernels.reasons()
    assert not avail.packed_bf16 and not avail.packed_fp32
    assert why["packed_bf16"] == "RuntimeError: bf16 path needs the cpu support avx512bw"
    assert "differs from the plain computation" in why["packed_fp32"]
    model = tiny()
    with torch.no_grad():
        assert not packed.can_pack(model, 4)


def test_cpu_features_come_from_cpuinfo():
    feats = kernels.cpu_features()
    assert feats == [f for f in kernels.FEATURES if f in feats]  # known names, in FEATURES order
    flags = kernels._cpuinfo("flags").split()
    if flags:
        assert feats == [f for f in kernels.FEATURES if f in flags]
    assert kernels.cpu_model()


def test_doctor_reports_features_and_kernels():
    r = subprocess.run([sys.executable, "-m", "lmlab", "doctor"], cwd=ROOT, env=lmlab_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"torch {torch.__version__}" in out and "cpu features:" in out
    assert " ".join(kernels.cpu_features()) in out
    assert "LMLAB_KERNELS: unset" in out
    for name in kernels.NAMES:
        assert f"  {name} " in out
    assert out.count("used:") == sum(vars(kernels.available()).values())


def test_doctor_reports_the_forced_fallback():
    r = subprocess.run([sys.executable, "-m", "lmlab", "doctor"], cwd=ROOT,
                       env=lmlab_env(LMLAB_KERNELS="plain"), capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "LMLAB_KERNELS: plain (every optional kernel forced off)" in r.stdout
    assert r.stdout.count("not used (forced off by LMLAB_KERNELS=plain); instead:") == len(
        kernels.NAMES
    )
    assert "used:" not in r.stdout.replace("not used", "")


def sevens(prompts, completions, **_):
    return [c.count("7") / 4 for c in completions]


def test_bf16_rollouts_and_grpo_run_on_the_kernels_this_cpu_has(tmp_path, monkeypatch):
    """Without forcing anything: bf16 rollouts (autocast, bf16 weights) pack the weights where
    oneDNN's bf16 path works and stay plain where it does not, with the plain path's results;
    a bf16 GRPO step runs. In a subprocess capped to AVX2 (below) this is the fallback."""
    use_bf16 = kernels.available().packed_bf16
    packs = spy(monkeypatch, "mkldnn", "_reorder_linear_weight")
    can_pack = packed.can_pack
    for mode in ("autocast", "bf16-weights"):
        model = tiny(torch.bfloat16 if mode == "bf16-weights" else torch.float32)
        runs = []
        for plain in (False, True):
            monkeypatch.setattr(packed, "can_pack", (lambda *a: False) if plain else can_pack)
            with torch.autocast("cpu", torch.bfloat16, enabled=mode == "autocast"):
                gen = torch.Generator().manual_seed(3)
                runs.append(rollout(model, [[1, 2, 3, 4, 5], [1, 2, 7]], 4, 8, generator=gen))
        assert runs[0].completions == runs[1].completions
        torch.testing.assert_close(runs[0].logps, runs[1].logps, atol=1e-6, rtol=0)
    assert bool(packs) == use_bf16
    monkeypatch.setattr(packed, "can_pack", can_pack)
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(10, 20)]
    cfg = GRPOConfig(chat=False, num_generations=4, prompts_per_step=2, micro_batch_size=8,
                     max_new_tokens=4, train=grpo_train_config(out_dir=str(tmp_path), dtype="bfloat16"))  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(preset("gpt2-tiny", vocab_size=12, max_seq_len=32, d_model=32,
                               n_layers=2, n_heads=4))  # fmt: skip
    tr = GRPOTrainer(model, CharTokenizer(CHARS), cfg, RLTask(rows, rows, [sevens], None, ""))
    tr.stop_ids = [11]
    assert torch.isfinite(torch.tensor(tr.step()["loss"]))
    assert bool(packs) == use_bf16


def test_avx2_only_cpu_falls_back_to_plain_bf16():
    """With oneDNN capped to AVX2, its bf16 reorder raises the error AVX2-only CPUs give; the probe
    sees it and bf16 rollouts, a GRPO step and the packed-decoding tests pass on plain linears."""
    env = lmlab_env(**AVX2_ONLY)
    raw = "import torch; torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 16).bfloat16(), 2)"
    r = subprocess.run([sys.executable, "-c", raw], env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    if r.returncode == 0:
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 does not turn off oneDNN's bf16 path in this build")
    assert "bf16 path needs the cpu support" in r.stderr, r.stderr
    tests = ["test_kernels.py::test_bf16_rollouts_and_grpo_run_on_the_kernels_this_cpu_has",
             "test_grpo.py::test_packed_decoding_equals_plain_decoding"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        *tests], cwd=ROOT / "tests", env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    assert "5 passed, 2 skipped" in r.stdout, r.stdout[-3000:]
    assert "lmlab does not use packed_bf16 here: RuntimeError:" in r.stdout
    assert "avx512bw" in r.stdout  # the skip names the missing CPU feature
