"""GRPOConfig: the knobs of a GRPO run (names follow TRL's GRPOConfig where one exists); the
optimizer, schedule, steps, checkpoints and run folder are the shared `train: TrainConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmlab.config import ConfigError
from lmlab.rl.grpo import LOSS_TYPES, SCALES
from lmlab.train.config import TrainConfig

# GRPO's training defaults: constant lr after an optional warmup, no weight decay, torch's Adam
# betas, clip at 1, a record per step, checkpoints only at the end. Of TrainConfig's fields GRPO
# does not use model/model_overrides (see GRPOConfig.model), data, data_options, block_size,
# batch_size (see prompts_per_step), grad_accum (see micro_batch_size) and the eval_* ones.
GRPO_TRAIN = {
    "lr": 1e-5, "min_lr": 0.0, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
    "beta2": 0.999, "grad_clip": 1.0, "max_steps": 50, "log_interval": 1, "eval_interval": 0,
    "checkpoint_interval": 0, "out_dir": "runs/rl/grpo", "tensorboard": False, "seed": 0,
}  # fmt: skip
# GRPO settings a resume may change: they only say how much to evaluate, when to stop or how to
# run the rollouts (compiled rollouts sample the same tokens up to float rounding)
RESUME_FREE = frozenset(
    {"eval_size", "eval_batch_size", "eval_max_new_tokens", "max_minutes", "compile"}
)
ROLLOUT_PRECISIONS = ("policy", "bf16", "int8", "int4")


def grpo_train_config(**overrides: Any) -> TrainConfig:
    """A `TrainConfig` with GRPO's defaults (`GRPO_TRAIN`) and `overrides` on top."""
    return TrainConfig(**{**GRPO_TRAIN, **overrides})


@dataclass
class GRPOConfig:
    """A GRPO run; defaults are small enough for a CPU. `train` holds lr, max_steps, warmup,
    grad_clip, dtype, threads, seed, checkpoint_interval, out_dir (`--train.lr=3e-5`)."""

    model: str = "smollm2-135m-instruct"  # what `lmlab.load` accepts (the CLI loads it)
    task: str = "arithmetic"  # arithmetic | countdown | riddles[:PATH] | jsonl:PATH
    task_options: dict = field(default_factory=dict)
    chat: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    system_prompt: str | None = None  # None: the task's own instruction
    num_generations: int = 8  # G: completions per prompt
    prompts_per_step: int = 4
    micro_batch_size: int = 16  # completions per forward/backward (gradient accumulation)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    compile: bool = False  # decode rollouts through torch.compile (static KV cache)
    # what samples the rollouts: "policy" (the trained model as it is), "bf16" (it, under bf16
    # autocast), "int8" / "int4" (a weight-only quantized copy, re-made after every optimizer
    # step); training forwards and evaluation always use the policy at full precision
    rollout_precision: str = "policy"
    beta: float = 0.0  # k3 KL weight; 0 keeps no reference model
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon (DAPO uses 0.28)
    num_iterations: int = 1  # mu: optimizer passes per batch of rollouts
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    reward_weights: list[float] | None = None
    max_minutes: float = 0.0  # > 0: also stop training once this much wall time has passed
    trainable: str = "all"  # all | last:N (only the last N blocks + final norm train)
    lora_rank: int = 0  # > 0: LoRA adapters (needs lmlab.peft)
    lora_alpha: float = 16.0
    eval_size: int = 200
    eval_batch_size: int = 50
    eval_max_new_tokens: int | None = None  # None: max_new_tokens
    train: TrainConfig = field(default_factory=grpo_train_config)

    def validate(self) -> None:
        """Raise ConfigError naming the bad value and the fix."""
        if self.num_generations < 2:
            raise ConfigError(
                f"num_generations={self.num_generations}: GRPO needs >= 2 completions per prompt "
                "to compare them (group-relative advantages); set num_generations >= 2"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type={self.loss_type!r} is not one of {LOSS_TYPES}")
        if self.scale_rewards not in SCALES:
            raise ConfigError(f"scale_rewards={self.scale_rewards!r} is not one of {SCALES}")
        for name in ("prompts_per_step", "micro_batch_size", "max_new_tokens", "num_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.beta < 0 or self.epsilon < 0 or self.temperature <= 0:
            raise ConfigError(
                f"beta={self.beta}, epsilon={self.epsilon} must be >= 0 and temperature="
                f"{self.temperature} > 0 (GRPO samples; use temperature 1.0)"
            )
        if self.rollout_precision not in ROLLOUT_PRECISIONS:
            raise ConfigError(
                f"rollout_precision={self.rollout_precision!r}: use one of "
                f"{', '.join(ROLLOUT_PRECISIONS)}"
            )
        if self.rollout_precision in ("int8", "int4") and self.lora_rank > 0:
            raise ConfigError(
                f"rollout_precision={self.rollout_precision!r} with lora_rank={self.lora_rank}: "
                "quantized rollout copies are made of plain models; use 'bf16' with LoRA"
            )
        if not (self.trainable == "all" or self.trainable.startswith("last:")):
            raise ConfigError(f"trainable={self.trainable!r}: use 'all' or 'last:N'")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(
                f"train={self.train!r} must be a TrainConfig; build it with "
                "lmlab.rl.config.grpo_train_config(lr=..., max_steps=...) (GRPO's defaults)"
            )
        self.train.validate()

    def settings(self) -> dict[str, Any]:
        """The GRPO settings (without `train`) as plain values, as checkpoints record them."""
        return {k: v for k, v in asdict(self).items() if k != "train"}

    def resume_changes(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(setting, checkpoint value, this value) for each GRPO setting a resume must refuse."""
        now = self.settings()
        return [
            (k, saved[k], now[k])
            for k in now
            if k in saved and k not in RESUME_FREE and saved[k] != now[k]
        ]
