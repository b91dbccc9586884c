"""Export an lmlab model to the Hugging Face layout (config.json + model.safetensors) for GPT-2
and the Llama family (Llama, SmolLM2, Mistral), so `transformers` loads the folder directly.

Before writing, the HF config is translated back with `config_from_hf` and compared with the
model's own config: a knob the HF architecture cannot express is an error, not a silent change.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file

from lmlab.config import Config
from lmlab.weights.errors import WeightsError
from lmlab.weights.hf import config_from_hf, lmlab_to_hf
from lmlab.weights.writer import model_files

if TYPE_CHECKING:
    from lmlab.model import Transformer
    from lmlab.tokenizers.base import Tokenizer

FAMILIES = ("gpt2", "llama", "mistral")
LMLAB_FORMAT_HINT = (
    "write an lmlab checkpoint instead: --format lmlab "
    "(lmlab.weights.checkpoint.save_checkpoint), which keeps every architecture"
)
# fields that do not change what the network computes, so export need not preserve them
_IGNORED = {"name", "extra", "dropout", "init_std", "pad_token_id", "bos_token_id", "eos_token_id"}
_GPT2_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "quick_gelu": "quick_gelu"}


def hf_config(cfg: Config) -> dict[str, Any]:
    """The transformers `config.json` dict for `cfg` (GPT-2 or Llama family)."""
    ids = {  # ids outside the vocabulary (e.g. gpt2-tiny's inherited 50256) are left out
        k: getattr(cfg, k)
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        if getattr(cfg, k) is not None and 0 <= getattr(cfg, k) < cfg.vocab_size
    }
    if cfg.family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": _GPT2_ACT.get(cfg.mlp, cfg.mlp),
            "tie_word_embeddings": cfg.tie_embeddings,
            **ids,
        }
    if cfg.family not in ("llama", "mistral"):
        raise WeightsError(
            f"export to the HF layout supports the {', '.join(FAMILIES)} families, not {cfg.family!r}; "
            f"{LMLAB_FORMAT_HINT}"
        )
    arch = "MistralForCausalLM" if cfg.family == "mistral" else "LlamaForCausalLM"
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rope_scaling": _rope_scaling(cfg),
        "attention_bias": cfg.attn_qkv_bias,
        "mlp_bias": cfg.mlp_bias,
        "tie_word_embeddings": cfg.tie_embeddings,
        **ids,
    }
    if cfg.family == "mistral":
        out["sliding_window"] = cfg.sliding_window
    return out


def _rope_scaling(cfg: Config) -> dict[str, Any] | None:
    if cfg.rope_scaling is None:
        return None
    out: dict[str, Any] = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
    if cfg.rope_scaling in ("llama3", "yarn"):
        out["original_max_position_embeddings"] = cfg.rope_original_max_seq_len
    if cfg.rope_scaling == "llama3":
        out.update(
            low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor
        )
    if cfg.rope_scaling == "yarn":
        out.update(
            beta_fast=cfg.yarn_beta_fast,
            beta_slow=cfg.yarn_beta_slow,
            truncate=cfg.yarn_truncate,
            attention_factor=cfg.yarn_attention_factor,
        )
    return out


def check_exportable(cfg: Config) -> dict[str, Any]:
    """The HF config of `cfg`, after checking it describes the same network; raises otherwise."""
    hf = hf_config(cfg)
    back = config_from_hf(hf, name=cfg.name)
    diff = [
        f"{f.name}={getattr(cfg, f.name)!r} (HF would give {getattr(back, f.name)!r})"
        for f in dataclasses.fields(Config)
        if f.name not in _IGNORED and getattr(cfg, f.name) != getattr(back, f.name)
    ]
    if diff:
        raise WeightsError(
            f"{cfg.name}: the transformers {hf['model_type']} architecture cannot express "
            f"{'; '.join(diff)}; {LMLAB_FORMAT_HINT}, or export a model without these knobs"
        )
    return hf


def export_hf(
    model: Transformer,
    folder: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a transformers folder (config.json + model.safetensors [+ tokenizer]).

    Only into a new or empty folder unless `overwrite=True`, which replaces just these files.
    """
    cfg = model.cfg
    hf = check_exportable(cfg)
    sd = model.state_dict()
    if cfg.tie_embeddings:
        sd.pop("unembed.weight", None)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lmlab_to_hf(sd, cfg).items()}
    dtypes = {
        str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()
    }
    hf["torch_dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    with model_files(folder, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(folder)
