"""Helpers shared by family modules: Llama-style configs and tensor maps, RoPE scaling, GGUF metadata.

A Llama-like family (RMSNorm, RoPE, gated MLP, `model.layers.{i}.self_attn.q_proj` names) is mostly
these pieces with a few knobs changed; see `lmlab/families/llama.py` for the smallest example.
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import Config, ConfigError
from lmlab.families.base import GGUFSource

# ---------------------------------------------------------------------------- HF config -> Config

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def first_id(x: Any) -> int | None:
    """A token id from a config value that may be a list of ids (the first counts) or None."""
    return x[0] if isinstance(x, list) and x else (x if isinstance(x, int) else None)


def special_ids(hf: dict[str, Any]) -> dict[str, int | None]:
    """`bos_token_id`, `eos_token_id`, `pad_token_id` of an HF config, as `Config` fields."""
    return {k: first_id(hf.get(k)) for k in SPECIAL_IDS}


_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "quick_gelu": "quick_gelu",
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu_fast": "gelu_tanh",
}


def activation(name: str, gated: bool = False) -> str:
    """`Config.mlp` for an HF activation name; `gated` for MLPs with a gate projection."""
    if name not in _ACTIVATIONS:
        raise ConfigError(
            f"activation {name!r} is not supported; supported: {', '.join(_ACTIVATIONS)}"
        )
    act = _ACTIVATIONS[name]
    if gated:
        return {"swiglu": "swiglu", "gelu_tanh": "geglu", "gelu": "geglu"}.get(act, act)
    return act


def rope_params(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings: transformers 5 keeps them in `rope_parameters`, older files in rope_theta + rope_scaling."""
    rp = hf.get("rope_parameters")
    if rp:
        return dict(rp)
    out = dict(hf.get("rope_scaling") or {})
    if "rope_theta" in hf:
        out["rope_theta"] = hf["rope_theta"]
    return out


def rope_scaling_from_hf(rope: dict[str, Any]) -> dict[str, Any]:
    """`Config` RoPE-scaling fields from an HF `rope_scaling`/`rope_parameters` dict."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        return {"rope_scaling": None, "rope_factor": 1.0}
    if kind not in ("linear", "llama3", "yarn"):
        raise ConfigError(
            f"rope scaling {kind!r} is not supported; supported: linear, llama3, yarn"
        )
    out: dict[str, Any] = {"rope_scaling": kind, "rope_factor": float(rope.get("factor", 1.0))}
    if kind in ("llama3", "yarn"):
        out["rope_original_max_seq_len"] = int(rope["original_max_position_embeddings"])
    if kind == "llama3":
        out.update(
            rope_low_freq_factor=rope.get("low_freq_factor", 1.0),
            rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
        )
    if kind == "yarn":
        out.update(
            yarn_beta_fast=rope.get("beta_fast") or 32.0,
            yarn_beta_slow=rope.get("beta_slow") or 1.0,
            yarn_truncate=rope.get("truncate", True),
            yarn_attention_factor=rope.get("attention_factor"),
        )
    return out


def rope_scaling_to_hf(cfg: Config) -> dict[str, Any] | None:
    """HF `rope_scaling` dict for `cfg` (None without scaling); inverse of `rope_scaling_from_hf`."""
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


def decoder_kwargs(hf: dict[str, Any], name: str) -> dict[str, Any]:
    """`Config` fields every Llama-like HF config shares (RMSNorm, RoPE, SwiGLU, GQA)."""
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    rope = rope_params(hf)
    return dict(
        name=name,
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or d // heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_bias=False,
        positions="rope",
        attn_qkv_bias=hf.get("attention_bias", False),
        attn_out_bias=hf.get("attention_bias", False),
        mlp=activation(hf.get("hidden_act", "silu"), gated=True),
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=rope.get("rope_theta", 10000.0),
        **rope_scaling_from_hf(rope),
        **special_ids(hf),
    )


def layer_types_from_hf(hf: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
    """`kw` with `layer_types` from HF `layer_types` (or all full without a window); checks the window."""
    kinds = hf.get("layer_types")
    if kinds is not None:
        kw["layer_types"] = tuple("sliding" if t == "sliding_attention" else "full" for t in kinds)
    elif kw.get("sliding_window") is None:
        kw["layer_types"] = ("full",) * kw["n_layers"]
    if kw.get("sliding_window") is None and "sliding" in kw.get("layer_types", ()):
        raise ConfigError("config.json marks sliding layers but gives no sliding_window")
    return kw


# ---------------------------------------------------------------------------- Config -> HF config


def hf_special_ids(cfg: Config) -> dict[str, int]:
    """Special ids for an exported config.json; ids outside the vocabulary are left out."""
    return {
        k: getattr(cfg, k)
        for k in SPECIAL_IDS
        if getattr(cfg, k) is not None and 0 <= getattr(cfg, k) < cfg.vocab_size
    }


def decoder_hf_config(cfg: Config, architecture: str, model_type: str) -> dict[str, Any]:
    """The Llama-style `config.json` dict for `cfg`; families add or change their own keys."""
    return {
        "architectures": [architecture],
        "model_type": model_type,
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
        "rope_scaling": rope_scaling_to_hf(cfg),
        "attention_bias": cfg.attn_qkv_bias,
        "mlp_bias": cfg.mlp_bias,
        "tie_word_embeddings": cfg.tie_embeddings,
        **hf_special_ids(cfg),
    }


def hf_layer_types(cfg: Config) -> list[str]:
    """HF `layer_types` ("full_attention" / "sliding_attention") of `cfg`."""
    return [f"{k}_attention" for k in cfg.layer_types]


# ---------------------------------------------------------------------------- HF tensor names

ATTENTION = (
    ("self_attn.q_proj", "attn.q"),
    ("self_attn.k_proj", "attn.k"),
    ("self_attn.v_proj", "attn.v"),
    ("self_attn.o_proj", "attn.o"),
)
GATED_MLP = (
    ("mlp.gate_proj", "mlp.gate"),
    ("mlp.up_proj", "mlp.up"),
    ("mlp.down_proj", "mlp.down"),
)
PRE_NORMS = (("input_layernorm", "ln1"), ("post_attention_layernorm", "ln2"))
QK_NORMS = (("self_attn.q_norm", "attn.q_norm"), ("self_attn.k_norm", "attn.k_norm"))
DECODER_TOP = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "ln_final.weight",
    "lm_head.weight": "unembed.weight",
}


def module_renames(hf_prefix: str, ours_prefix: str, pairs: Any) -> dict[str, str]:
    """`weight` and `bias` renames for (HF module, lmlab module) pairs under two prefixes."""
    return {
        f"{hf_prefix}{h}.{kind}": f"{ours_prefix}{o}.{kind}"
        for h, o in pairs
        for kind in ("weight", "bias")
    }


def decoder_renames(
    cfg: Config, layer_pairs: Any, top: dict[str, str] = DECODER_TOP
) -> dict[str, str]:
    """HF -> lmlab renames of a Llama-style decoder with `layer_pairs` in every layer."""
    m: dict[str, str] = {}
    for i in range(cfg.n_layers):
        m |= module_renames(f"model.layers.{i}.", f"blocks.{i}.", layer_pairs)
    return m | top


# ---------------------------------------------------------------------------- GGUF

LLAMA_GGUF_LAYER = {  # llama.cpp per-layer names -> HF, Llama-style decoders
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
DECODER_GGUF_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs -> HF's rotate-half halves).

    The converter maps rows [h, 2, d/2] -> [h, d/2, 2] within each head; this maps them back.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ConfigError(
            f"q/k projection with {rows} rows cannot be split into {n_heads} heads of even size"
        )
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
        .contiguous()
    )


def unpermute_qk(gguf_name: str, t: torch.Tensor, hf: dict[str, Any]) -> torch.Tensor:
    """`t` with llama.cpp's Q/K permutation undone if `gguf_name` is a q or k projection."""
    if ".attn_q." in gguf_name:
        return unpermute_rope(t, hf["num_attention_heads"])
    if ".attn_k." in gguf_name:
        return unpermute_rope(t, hf["num_key_value_heads"])
    return t


class GGUFMeta:
    """Typed access to `{arch}.*` metadata of a GGUF file, with errors naming a missing key."""

    def __init__(self, gf: GGUFSource) -> None:
        self.gf, self.md, self.arch = gf, gf.metadata, gf.architecture

    def get(self, key: str, default: Any = None) -> Any:
        """`{arch}.{key}`, or `default` when absent."""
        return self.md.get(f"{self.arch}.{key}", default)

    def need(self, key: str) -> Any:
        """`{arch}.{key}`; a `ConfigError` when the file lacks it."""
        v = self.get(key)
        if v is None:
            raise ConfigError(
                f"metadata {self.arch}.{key} is missing; the file is incomplete, re-convert it"
            )
        return v

    def has_tensor(self, name: str) -> bool:
        """Whether the file stores tensor `name`."""
        return name in self.gf.infos

    def vocab_size(self) -> int:
        """Rows of the token embedding, else `{arch}.vocab_size`, else the token list's length."""
        embd = self.gf.infos.get("token_embd.weight")
        tokens = self.md.get("tokenizer.ggml.tokens")
        vocab = (
            embd.shape[0] if embd else self.get("vocab_size") or (len(tokens) if tokens else None)
        )
        if vocab is None:
            raise ConfigError(
                "cannot tell the vocabulary size (no token_embd.weight, no token list)"
            )
        return vocab

    def special_ids(self) -> dict[str, int]:
        """HF special-id keys from `tokenizer.ggml.*_token_id`."""
        return {
            f"{hf}_token_id": self.md[f"tokenizer.ggml.{k}_token_id"]
            for hf, k in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
            if f"tokenizer.ggml.{k}_token_id" in self.md
        }

    def tied(self) -> bool:
        """Whether the output head shares the embedding (the file stores no `output.weight`)."""
        return "output.weight" not in self.gf.infos

    def kv_heads(self) -> int:
        """KV head count; per-layer lists (hybrid models) give their maximum, as transformers does."""
        kv = self.get("attention.head_count_kv", self.need("attention.head_count"))
        return max(kv) if isinstance(kv, list) else kv

    def rope_scaling(self) -> dict[str, Any] | None:
        """HF `rope_scaling` from `{arch}.rope.scaling.*`, or None when the file has no scaling."""
        kind = self.get("rope.scaling.type")
        if kind in (None, "none"):
            return None
        out: dict[str, Any] = {"rope_type": kind}
        for gguf_key, hf_key in (
            ("factor", "factor"),
            ("original_context_length", "original_max_position_embeddings"),
            ("attn_factor", "attention_factor"),
            ("yarn_beta_fast", "beta_fast"),
            ("yarn_beta_slow", "beta_slow"),
        ):
            if (v := self.get(f"rope.scaling.{gguf_key}")) is not None:
                out[hf_key] = v
        return out

    def decoder_config(self) -> dict[str, Any]:
        """The HF config keys every Llama-style GGUF decoder shares."""
        return {
            "vocab_size": self.vocab_size(),
            "hidden_size": self.need("embedding_length"),
            "intermediate_size": self.need("feed_forward_length"),
            "num_hidden_layers": self.need("block_count"),
            "num_attention_heads": self.need("attention.head_count"),
            "num_key_value_heads": self.kv_heads(),
            "max_position_embeddings": self.get("context_length", 2048),
            "rms_norm_eps": self.get("attention.layer_norm_rms_epsilon", 1e-6),
            "rope_scaling": self.rope_scaling(),
            "tie_word_embeddings": self.tied(),
            "attention_bias": self.has_tensor("blk.0.attn_q.bias"),
            **self.special_ids(),
        }
