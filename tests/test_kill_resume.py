"""kill -9 at three random moments, then resume: final weights and metrics bit-identical to an
uninterrupted run, for every kind of training (issue 21). Also: a rerun into a finished run folder
without --resume is refused and leaves it untouched; the metrics never repeat a step.

Each kind is a small training run in a subprocess (`lmlab train`, or a short driver script calling
the library). The clean run goes first and gives the step time; then one run is SIGKILLed three
times, each time once the checkpoint of a seeded random step is in place plus a random fraction of
a step (so kills land inside computation and inside checkpoint writes), resumed, and run to the end.
Kill moments follow the run's own progress (its checkpoint manifest), not wall time, so a loaded
2-core machine changes when they happen but not whether they do.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmlab import checkpoints as ckpt

ROOT = Path(__file__).resolve().parents[1]
# metric keys that measure time or speed: they differ between any two runs
VOLATILE = frozenset({"tok_s", "mfu", "seconds", "rollout_tok_s", "elapsed", "time", "eta"})
KILLS = 3
TIMEOUT = 180  # seconds for one subprocess on a loaded 2-core machine


@dataclass
class Kind:
    """One kind of training: how to start it, resume it, and how many steps it runs."""

    name: str
    steps: int
    command: Callable[[Path, Path, bool], list[str]]  # (tmp folder, out_dir, resume) -> argv
    prefix: str = ckpt.PREFIX  # checkpoint file prefix in out_dir


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _newest_step(out: Path, prefix: str) -> int:
    """The step of the newest checkpoint the manifest lists (0 when none yet)."""
    path = out / ckpt.manifest_name(prefix)
    try:
        recs = json.loads(path.read_text())["checkpoints"]
    except (OSError, ValueError, KeyError):  # not written yet (the manifest is replaced atomically)
        return 0
    return max((int(r["step"]) for r in recs), default=0)


def _records(out: Path) -> list[dict]:
    """metrics.jsonl without the timing keys."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in VOLATILE} for ln in lines]


def _final_state(out: Path, prefix: str) -> dict:
    return ckpt.load(ckpt.latest(out, prefix, warn=False))


def _tensors(obj, where: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {where: obj}
    items = (
        obj.items()
        if isinstance(obj, dict)
        else enumerate(obj)
        if isinstance(obj, list | tuple)
        else ()
    )
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{where}/{k}"))
    return out


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    """Start `argv` with its stderr in `log` (a pipe could fill up and stall it)."""
    with open(log, "w") as err:
        return subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=err)


def _clean_run(kind: Kind, tmp: Path, out: Path) -> float:
    """Run `kind` uninterrupted into `out`; returns its mean seconds per step after the first."""
    log = tmp / "clean.err"
    proc = _start(kind.command(tmp, out, False), log)
    while proc.poll() is None and _newest_step(out, kind.prefix) < 1:
        time.sleep(0.005)
    t_first = time.perf_counter()
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return (time.perf_counter() - t_first) / (kind.steps - 1)


def kill_and_resume(kind: Kind, tmp: Path, seed: int) -> tuple[Path, Path]:
    """Run `kind` clean, then killed `KILLS` times and resumed to the end; returns both out_dirs."""
    clean, killed = tmp / "clean", tmp / "killed"
    step_time = _clean_run(kind, tmp, clean)
    rng = random.Random(seed)
    # checkpoints after which to kill: increasing, leaving steps for the kill to land before the end
    targets = sorted(rng.sample(range(1, kind.steps - 3), KILLS))
    for i, target in enumerate(targets):
        log = tmp / f"killed{i}.err"
        proc = _start(kind.command(tmp, killed, i > 0), log)
        try:
            deadline = time.time() + TIMEOUT
            while proc.poll() is None and _newest_step(killed, kind.prefix) < target:
                assert time.time() < deadline, (
                    f"{kind.name}: no checkpoint of step {target} in time"
                )
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, step_time))  # inside the next step (or its checkpoint)
            if proc.poll() is not None:
                pytest.fail(
                    f"{kind.name}: run {i + 1} ended (rc {proc.returncode}) before its kill after "
                    f"step {target}; give it more steps. stderr: {log.read_text()[-1500:]}"
                )
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert _newest_step(killed, kind.prefix) >= target
    done = _run(kind.command(tmp, killed, True))
    assert done.returncode == 0, done.stderr[-3000:]
    # every resume found an intact newest checkpoint (a fallback prints "warning: ...")
    for err in [done.stderr, *(log.read_text() for log in sorted(tmp.glob("killed*.err")))]:
        assert not re.search(r"^warning:", err, re.M), err[-2000:]
    return clean, killed


def check_identical(kind: Kind, clean: Path, killed: Path) -> None:
    """Same final weights and optimizer state (torch.equal), same metric records, each step once."""
    a, b = _final_state(clean, kind.prefix), _final_state(killed, kind.prefix)
    assert a["step"] == b["step"] == kind.steps
    wa, wb = _tensors(a["model"]), _tensors(b["model"])
    assert wa.keys() == wb.keys() and wa
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), f"{kind.name}: weight {k} differs after kills + resumes"
    opt_key = "optimizer" if "optimizer" in a else "opt"
    oa, ob = _tensors(a.get(opt_key, {})), _tensors(b.get(opt_key, {}))
    assert oa.keys() == ob.keys()
    for k, v in oa.items():
        assert torch.equal(v, ob[k]), f"{kind.name}: optimizer state {k} differs"
    ra, rb = _records(clean), _records(killed)
    keys = [(r["step"], tuple(sorted(r))) for r in rb]
    assert len(keys) == len(set(keys)), f"{kind.name}: a metrics record repeats after a resume"
    assert ra == rb, f"{kind.name}: metrics differ after kills + resumes"
    assert not list(killed.glob(".*tmp*")), "a killed writer's temporary file was left behind"


def check_refuses_rerun(kind: Kind, tmp: Path, out: Path) -> None:
    """Starting again into a run folder without --resume fails with one error and changes nothing."""
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = _run(kind.command(tmp, out, False))
    assert again.returncode != 0, f"{kind.name}: a rerun into {out} without --resume ran"
    assert "--resume" in again.stderr, again.stderr[-1500:]
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


# ---------------------------------------------------------------------- kinds of training
LM_TOML = """
model = "gpt2-tiny"
data = "task:induction"
batch_size = 8
max_steps = 30
lr = 3e-3
warmup_steps = 5
eval_interval = 10
eval_iters = 1
log_interval = 1
checkpoint_interval = 1
tensorboard = false
progress = false
threads = 1
seed = 11

[model_overrides]
d_model = 32
n_layers = 1
n_heads = 2
dropout = 0.1

[data_options]
vocab_size = 20
seq_len = 8
"""


def _lm(tmp: Path, out: Path, resume: bool) -> list[str]:
    cfg = tmp / "lm.toml"
    cfg.write_text(LM_TOML)
    argv = [sys.executable, "-m", "lmlab", "train", str(cfg), f"--out_dir={out}"]
    return [*argv, "--resume"] if resume else argv


# SFT, LoRA, classification and GRPO: a driver script calling the library, on a tiny random GPT
# with dropout (so a resume must restore the global RNG too). A resumed SFT, LoRA or GRPO run
# starts from other values in its trainable weights, so each must come back from the checkpoint
# (classification chooses what trains inside train_classifier; a weight not restored there would
# still hold its initial value, not the trained one)
DRIVER = """
import sys

import torch

from lmlab.families import preset
from lmlab.model import Transformer
from lmlab.tokenizers.char import CharTokenizer
from lmlab.train.config import finetune_config

kind, out, resume, steps = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
torch.set_num_threads(1)
tok = CharTokenizer("0123456789+=ab ", special_tokens=["<|endoftext|>"])
torch.manual_seed(0)  # the pretrained model: the same in every run (frozen weights are not saved)
model = Transformer(preset("gpt2-tiny", vocab_size=16, max_seq_len=32, d_model=32, n_layers=2,
                           n_heads=4, dropout=0.1))


def scramble(m):  # a resumed run starts from other values in every weight that trains
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))

train = dict(max_steps=steps, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_interval=1,
             out_dir=out, resume=resume, progress=False, threads=1, seed=5)
pairs = [(f"{i}+{i}=", str(2 * i)) for i in range(10, 40)]
if kind in ("sft", "lora"):
    from lmlab.finetune.sft import SFTConfig, train_sft

    if kind == "lora":
        from lmlab.peft import apply_lora

        apply_lora(model, r=4, alpha=8.0, target_modules=["attn.q", "attn.v"])
    if resume:
        scramble(model)
    train_sft(model, tok, pairs, SFTConfig(train=finetune_config(**train)))
elif kind == "classify":
    from lmlab.finetune.classify import ClassifyConfig, SequenceClassifier, train_classifier
    from lmlab.finetune.data import LabeledTexts

    texts = [f"{i}a{i % 7}b" for i in range(40)]
    data = LabeledTexts(texts, [int("7" in t) for t in texts], ["no", "yes"])
    clf = SequenceClassifier(model, 2)
    cfg = ClassifyConfig(train=finetune_config(**train, eval_interval=5), epochs=0, max_len=16)
    train_classifier(clf, tok, data, data.subset(list(range(8))), cfg=cfg)
elif kind == "grpo":
    from lmlab.rl import GRPOConfig, GRPOTrainer
    from lmlab.rl.config import grpo_train_config
    from lmlab.rl.tasks import RLTask

    rows = [{"prompt": p, "answer": a} for p, a in pairs]
    sevens = lambda prompts, completions, **_: [c.count("7") / 4 for c in completions]
    task = RLTask(train=rows, test=rows[:4], reward_funcs=[sevens], instruction="")
    del train["batch_size"]
    cfg = GRPOConfig(chat=False, num_generations=4, prompts_per_step=2, micro_batch_size=4,
                     max_new_tokens=4, num_iterations=2, eval_size=0,
                     train=grpo_train_config(**train))
    tr = GRPOTrainer(model, tok, cfg, task)
    if resume:
        scramble(model)
        tr.load()
    tr.fit(progress=False)
"""


def _driver(kind: str, steps: int) -> Callable[[Path, Path, bool], list[str]]:
    def command(tmp: Path, out: Path, resume: bool) -> list[str]:
        script = tmp / "driver.py"
        script.write_text(DRIVER)
        return [sys.executable, str(script), kind, str(out), str(int(resume)), str(steps)]

    return command


KINDS = [
    Kind("lm", 30, _lm),
    Kind("sft", 24, _driver("sft", 24)),
    Kind("lora", 24, _driver("lora", 24)),
    Kind("classify", 24, _driver("classify", 24)),
    Kind("grpo", 16, _driver("grpo", 16)),
]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_kill_nine_three_times_then_resume_is_bit_identical(kind, tmp_path):
    clean, killed = kill_and_resume(kind, tmp_path, seed=sum(map(ord, kind.name)))
    check_identical(kind, clean, killed)
    check_refuses_rerun(kind, tmp_path, killed)
