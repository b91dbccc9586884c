"""Llama (Llama 2/3, SmolLM2) and Mistral: RMSNorm, RoPE, SwiGLU, GQA; Mistral adds a sliding window."""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource
from lmlab.families.registry import register_family, register_preset


class Llama(Family):
    """Llama-style decoders; llama.cpp writes Mistral as this GGUF architecture too."""

    name = "llama"
    hf_model_types = ("llama",)
    gguf_archs = ("llama",)
    gguf_layer_names = common.LLAMA_GGUF_LAYER
    gguf_top_names = common.DECODER_GGUF_TOP
    architecture = "LlamaForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        kw = common.decoder_kwargs(hf, name) | {"family": self.name}
        if self.name == "mistral":
            kw["sliding_window"] = hf.get("sliding_window")
        return Config(**common.layer_types_from_hf(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, self.architecture, self.name)
        if self.name == "mistral":
            out["sliding_window"] = cfg.sliding_window
        return out

    def fits(self, cfg: Config) -> bool:
        return (
            cfg.norm == "rmsnorm"
            and cfg.positions == "rope"
            and cfg.mlp == "swiglu"
            and not (cfg.n_experts or cfg.qk_norm or cfg.sandwich_norm or cfg.attn_sinks)
            and (cfg.sliding_window is not None) == (self.name == "mistral")
        )

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        return common.decoder_renames(cfg, common.ATTENTION + common.PRE_NORMS + common.GATED_MLP)

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        cfg = meta.decoder_config()
        md = gf.metadata
        name = f"{md.get('general.name', '')} {md.get('general.basename', '')}".lower()
        mistral = "mistral" in name  # llama.cpp writes Mistral models as arch "llama"
        head_dim = (
            meta.get("attention.key_length")
            or meta.get("rope.dimension_count")
            or cfg["hidden_size"] // cfg["num_attention_heads"]
        )
        out = {
            "architectures": [Mistral.architecture if mistral else self.architecture],
            "model_type": Mistral.name if mistral else self.name,
            **cfg,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "rope_theta": meta.get("rope.freq_base", 10_000.0),
            "mlp_bias": meta.has_tensor("blk.0.ffn_up.bias"),
        }
        if mistral:
            out["sliding_window"] = meta.get("attention.sliding_window")
        return out

    def gguf_tensor_to_hf(
        self, gguf_name: str, t: torch.Tensor, hf: dict[str, Any]
    ) -> torch.Tensor:
        return common.unpermute_qk(gguf_name, t, hf)


class Mistral(Llama):
    """Mistral: Llama with a sliding attention window on every layer."""

    name = "mistral"
    hf_model_types = ("mistral",)
    gguf_archs = ()
    architecture = "MistralForCausalLM"


register_family(Llama())
register_family(Mistral())


def _llama(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="llama",
        norm="rmsnorm",
        norm_eps=1e-5,
        norm_bias=False,
        positions="rope",
        mlp="swiglu",
        mlp_bias=False,
        tie_embeddings=False,
    )
    return Config(**{**base, **kw})


def _smollm2(name: str, d: int, layers: int, heads: int, kv: int, ff: int) -> Config:
    return _llama(
        name,
        vocab_size=49152,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv,
        d_ff=ff,
        max_seq_len=8192,
        rope_theta=100000.0,
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )


register_preset("smollm2-135m", 135e6)(lambda: _smollm2("smollm2-135m", 576, 30, 9, 3, 1536))
register_preset("smollm2-360m", 362e6)(lambda: _smollm2("smollm2-360m", 960, 32, 15, 5, 2560))
register_preset("llama-2-7b", 6.74e9)(
    lambda: _llama(
        "llama-2-7b",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        d_ff=11008,
        max_seq_len=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
)
register_preset("llama-3.2-1b", 1.24e9)(
    lambda: _llama(
        "llama-3.2-1b",
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        max_seq_len=131072,
        rope_theta=500000.0,
        rope_scaling="llama3",
        rope_factor=32.0,
        rope_original_max_seq_len=8192,
        tie_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    )
)
register_preset("mistral-7b", 7.24e9)(
    lambda: _llama(
        "mistral-7b",
        family="mistral",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=32768,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
)
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("llama-tiny")(lambda: _llama("llama-tiny", **_TINY))
register_preset("mistral-tiny")(
    lambda: _llama("mistral-tiny", family="mistral", sliding_window=16, **_TINY)
)
