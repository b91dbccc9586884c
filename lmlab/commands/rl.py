"""`lmlab rl grpo CONFIG.toml [--key=value ...] [--resume]`: reinforcement learning with GRPO."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from lmlab.commands._threads import setup_threads

HELP = "RL with verifiable rewards: lmlab rl grpo CONFIG.toml [--key value ...] [--resume]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("algorithm", choices=["grpo"], help="the RL algorithm (grpo)")
    p.add_argument(
        "config", help='TOML file of GRPOConfig fields (see configs/grpo_*.toml), or "defaults"'
    )
    p.add_argument(
        "--show-config", action="store_true", help="print the resolved settings and exit"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest good checkpoint in train.out_dir (ckpt_*.pt); without it "
        "a folder holding a run is refused, and so are settings that differ from the checkpoint's",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="--key value (or --key=value) GRPOConfig fields, --train.KEY value training ones "
        "(also --KEY when GRPOConfig has no KEY: --lr 3e-5)",
    )


def setting_type(key: str, words: list[str]) -> Any:
    """The type of setting `--key` in `GRPOConfig` (for `lmlab.cli`)."""
    from lmlab.rl import GRPOConfig
    from lmlab.settings import field_type

    return field_type(GRPOConfig, key)


def build_config(args: argparse.Namespace) -> Any:
    """The checked `GRPOConfig`: defaults, then the TOML file, then the --key settings."""
    from lmlab.rl import GRPOConfig
    from lmlab.settings import from_toml

    cfg = from_toml(GRPOConfig, None if args.config == "defaults" else args.config, args.overrides)
    cfg.validate()
    return cfg


def main(args: argparse.Namespace) -> int:
    from lmlab.rl import GRPOTrainer
    from lmlab.rl.plots import plot_rewards
    from lmlab.rl.tasks import make_task
    from lmlab.rl.trainer import check_out_dir

    cfg = build_config(args)
    if args.show_config:
        print(json.dumps(asdict(cfg), indent=2))
        return 0
    import lmlab
    from lmlab.errors import InputError

    resume = args.resume or cfg.train.resume
    check_out_dir(cfg.train.out_dir, resume)  # before the slow model load
    setup_threads(cfg.train.threads, "--train.threads")
    task = make_task(cfg.task, **cfg.task_options)
    model, tok = lmlab.load(cfg.model)
    if tok is None:
        raise InputError(
            f"{cfg.model!r} has no tokenizer, so its completions cannot be scored as text; use a "
            "model with a tokenizer (a GGUF, HF folder or packaged name like smollm2-135m-instruct)"
        )
    model = model.float()
    trainer = GRPOTrainer(model, tok, cfg, task)
    if resume:
        trainer.load()
    before = trainer.evaluate() if trainer.step_no == 0 and cfg.eval_size else None
    trainer.fit()  # checkpoints at the end
    path = trainer.checkpoint
    after = trainer.evaluate() if cfg.eval_size else None
    plot = plot_rewards(trainer.history, trainer.out / "rewards.png")
    for name, ev in (("before", before), ("after", after)):
        if ev is not None:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if k != "samples")
            print(f"{name}: {scores}")
    print(f"checkpoint: {path}; metrics: {trainer.out / 'metrics.jsonl'}; plot: {plot}")
    return 0
