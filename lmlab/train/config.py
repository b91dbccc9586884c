"""`TrainConfig`: every knob of a training run, loadable from TOML with `--key=value` overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lmlab.config import Config, ConfigError, check_keys
from lmlab.families import preset

SCHEDULES = ("cosine", "wsd", "constant")
# settings that cannot change the weights a resumed run computes (up to float rounding where the
# device or thread count changes); `model`/`model_overrides` are compared as the built model config
RESUME_FREE = frozenset(
    {
        "out_dir", "resume", "allow_change", "progress", "tensorboard", "log_interval",
        "eval_interval", "eval_first", "eval_iters", "checkpoint_interval", "keep_checkpoints", "threads",
        "device", "compile", "parallel", "peak_flops", "model", "model_overrides",
        "eval_hellaswag_every", "hellaswag_data", "hellaswag_limit", "hellaswag_tokenizer",
    }
)  # fmt: skip
DTYPES = ("float32", "bfloat16")
PARALLEL = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """One training run. `model` is a preset name; `model_overrides` changes its fields."""

    # model
    model: str = "gpt2-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data: a prepared token folder, "shakespeare-char", or
    # "task:<addition|addition-cot|induction|trigram|maxsort>"
    data: str = "shakespeare-char"
    data_options: dict[str, Any] = field(default_factory=dict)
    block_size: int = 128
    batch_size: int = 32  # global sequences per micro-step (split across ranks)
    grad_accum: int = 1
    # optimization
    max_steps: int = 1000
    optimizer: str = "adamw"  # see lmlab.train.optimizers.names()
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # numerics and speed
    dtype: str = "float32"  # "bfloat16" runs forward/backward under autocast
    compile: bool = False
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    parallel: str = "ddp"  # with torchrun: "ddp" or "fsdp" (FSDP2 fully_shard)
    # eval, logging, checkpoints
    eval_interval: int = 100
    eval_first: bool = False  # also evaluate after step 1 (learning curves of toy models)
    eval_iters: int = 20
    # HellaSwag acc/acc_norm (lmlab.eval.choice) every N steps and at the end, logged as hellaswag_*;
    # 0: off. data "" is DATA_DIR/hellaswag_val.jsonl (fetched once when online); limit 0: all items;
    # tokenizer "" is the token folder's (its meta.json), else a load_tokenizer name such as "gpt2"
    eval_hellaswag_every: int = 0
    hellaswag_data: str = ""
    hellaswag_limit: int = 0
    hellaswag_tokenizer: str = ""
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0: only at the end
    keep_checkpoints: int = 2  # newest step-numbered checkpoints kept (older ones are deleted)
    out_dir: str = "runs/train"  # the run folder; "" keeps nothing on disk (library use)
    resume: bool = False
    # settings --resume may change from the checkpoint's (CLI: --allow-change lr,batch_size); any
    # other difference is refused. Always allowed: those that only say where, how fast or what to
    # log (RESUME_FREE above), and max_steps with schedule="constant" (cosine and wsd stretch
    # over max_steps, so a new max_steps changes every later lr: name it to extend such a run)
    allow_change: list[str] = field(default_factory=list)
    tensorboard: bool = True
    progress: bool = True
    seed: int = 1337
    peak_flops: float = 0.0  # for MFU; 0: guess from the device

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the field, value and fix for the first bad value."""
        for name in (
            "block_size",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_iters",
            "log_interval",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r} must be >= 1")
        for name, options in (("schedule", SCHEDULES), ("dtype", DTYPES), ("parallel", PARALLEL)):
            if getattr(self, name) not in options:
                raise ConfigError(
                    f"TrainConfig.{name}={getattr(self, name)!r} is not one of {list(options)}"
                )
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(
                f"TrainConfig lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr and lr > 0"
            )
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"TrainConfig.decay_fraction={self.decay_fraction} must be in (0, 1]")
        if self.warmup_steps < 0 or self.eval_interval < 0 or self.checkpoint_interval < 0:
            raise ConfigError(
                "TrainConfig warmup_steps, eval_interval and checkpoint_interval must be >= 0"
            )
        for name in ("eval_hellaswag_every", "hellaswag_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"TrainConfig.{name}={getattr(self, name)!r} must be >= 0 (0: off / all items)"
                )
        if not isinstance(self.model_overrides, dict):
            raise ConfigError(
                f"TrainConfig.model_overrides={self.model_overrides!r} must be a table of Config "
                "fields, e.g. [model_overrides] d_model = 128 (or --model.d_model=128)"
            )
        check_keys(self.model_overrides, Config)
        if isinstance(self.allow_change, str):
            self.allow_change = [s for s in self.allow_change.split(",") if s]
        check_keys(dict.fromkeys(self.allow_change), TrainConfig)

    def resume_changes(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(setting, checkpoint value, this value) for each difference `--resume` must refuse."""
        free = RESUME_FREE | set(self.allow_change)
        if self.schedule == "constant" == saved.get("schedule"):
            free |= {"max_steps"}
        now = self.to_dict()
        return [
            (k, saved[k], now[k])
            for k in now
            if k in saved and k not in free and saved[k] != now[k]
        ]

    def model_config(self, vocab_size: int | None = None, block_size: int | None = None) -> Config:
        """The model `Config`: the preset, the overrides, then the data's vocab size and block size."""
        over = dict(self.model_overrides)
        if vocab_size is not None:
            if over.get("vocab_size", vocab_size) < vocab_size:
                raise ConfigError(
                    f"model vocab_size={over['vocab_size']} is smaller than the data's vocabulary "
                    f"({vocab_size} ids); remove the override or raise it to >= {vocab_size}"
                )
            over.setdefault("vocab_size", vocab_size)
        over.setdefault("max_seq_len", block_size or self.block_size)
        return preset(self.model, **scaled_overrides(preset(self.model), over))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with `changes` applied."""
        return TrainConfig(**{**self.to_dict(), **changes})


def scaled_overrides(base: Config, over: dict[str, Any]) -> dict[str, Any]:
    """Overrides plus the derived widths they imply: a new d_model or n_heads rescales head_dim,
    n_kv_heads (keeping the GQA ratio) and d_ff (keeping its ratio to d_model) unless given."""
    over = dict(over)
    d, h = over.get("d_model", base.d_model), over.get("n_heads", base.n_heads)
    if "head_dim" not in over and base.head_dim == base.d_model // base.n_heads:
        over["head_dim"] = d // h
    if "n_kv_heads" not in over:
        over["n_kv_heads"] = max(1, h * base.n_kv_heads // base.n_heads)
    if "d_ff" not in over:
        over["d_ff"] = max(1, round(base.d_ff * d / base.d_model))
    return over


# finetuning from a library call: linear decay to 0, no weight decay, torch's Adam betas, nothing
# written to disk unless out_dir is set (then checkpoints, metrics and --resume work as for `lmlab train`)
FINETUNE = {
    "max_steps": 100, "batch_size": 8, "lr": 1e-4, "min_lr": 0.0, "warmup_steps": 0,
    "schedule": "wsd", "decay_fraction": 1.0, "weight_decay": 0.0, "beta2": 0.999,
    "grad_clip": 0.0, "eval_interval": 0, "log_interval": 1, "out_dir": "",
    "tensorboard": False, "seed": 0,
}  # fmt: skip


def finetune_config(**overrides: Any) -> TrainConfig:
    """A `TrainConfig` with the finetuning defaults (`FINETUNE`) and `overrides` on top."""
    return TrainConfig(**{**FINETUNE, **overrides})
