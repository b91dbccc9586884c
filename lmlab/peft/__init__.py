"""Parameter-efficient finetuning: LoRA (rsLoRA, DoRA), prompt tuning, prefix tuning, adapters."""

from lmlab.peft.adapters import apply_adapters, remove_adapters
from lmlab.peft.io import base_model_id, load_lora, save_lora
from lmlab.peft.lora import (
    LoraConfig,
    apply_lora,
    lora_layers,
    match_targets,
    merge_lora,
    remove_lora,
    set_lora_enabled,
    unmerge_lora,
)
from lmlab.peft.prefix_tuning import apply_prefix_tuning, prompt_kv, remove_prefix_tuning
from lmlab.peft.prompt_tuning import apply_prompt_tuning, remove_prompt_tuning
from lmlab.peft.report import trainable_report

__all__ = [
    "LoraConfig",
    "apply_adapters",
    "apply_lora",
    "apply_prefix_tuning",
    "apply_prompt_tuning",
    "base_model_id",
    "load_lora",
    "lora_layers",
    "match_targets",
    "merge_lora",
    "prompt_kv",
    "remove_adapters",
    "remove_lora",
    "remove_prefix_tuning",
    "remove_prompt_tuning",
    "save_lora",
    "set_lora_enabled",
    "trainable_report",
    "unmerge_lora",
]
