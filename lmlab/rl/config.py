"""GRPOConfig: every knob of a GRPO run (names follow TRL's GRPOConfig where one exists)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.config import ConfigError
from lmlab.rl.grpo import LOSS_TYPES, SCALES


@dataclass
class GRPOConfig:
    """A GRPO run; defaults are small enough for a CPU."""

    model: str = "smollm2-135m-instruct"  # what `lmlab.load` accepts (the CLI loads it)
    task: str = "arithmetic"  # arithmetic | countdown | jsonl:PATH
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
    dtype: str = "float32"  # "bfloat16": rollouts and training forwards under bf16 autocast
    beta: float = 0.0  # k3 KL weight; 0 keeps no reference model
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon (DAPO uses 0.28)
    num_iterations: int = 1  # mu: optimizer passes per batch of rollouts
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    reward_weights: list[float] | None = None
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    max_steps: int = 50
    max_minutes: float = 0.0  # > 0: also stop training once this much wall time has passed
    trainable: str = "all"  # all | last:N (only the last N blocks + final norm train)
    lora_rank: int = 0  # > 0: LoRA adapters (needs lmlab.peft)
    lora_alpha: float = 16.0
    eval_size: int = 200
    eval_batch_size: int = 50
    eval_max_new_tokens: int | None = None  # None: max_new_tokens
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    out_dir: str = "runs/rl/grpo"
    threads: int = 0  # torch threads (0: leave as is)
    seed: int = 0

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
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype={self.dtype!r}: use 'float32' or 'bfloat16' (autocast)")
        if not (self.trainable == "all" or self.trainable.startswith("last:")):
            raise ConfigError(f"trainable={self.trainable!r}: use 'all' or 'last:N'")
