"""Gemma 3: (1 + w) RMSNorm around both sublayers, QK-norm, GeGLU, 5 sliding layers per full one."""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource
from lmlab.families.registry import register_family, register_preset

_LAYER = (
    common.ATTENTION
    + common.GATED_MLP
    + common.QK_NORMS
    + (
        ("input_layernorm", "ln1"),
        ("post_attention_layernorm", "ln1_post"),
        ("pre_feedforward_layernorm", "ln2"),
        ("post_feedforward_layernorm", "ln2_post"),
    )
)


class Gemma3(Family):
    """Gemma 3 text models (and the language model inside the multimodal ones)."""

    name = "gemma3"
    hf_model_types = ("gemma3_text", "gemma3")
    gguf_archs = ("gemma3",)
    hf_prefixes = (("model.language_model.", "model."), ("language_model.model.", "model."))
    gguf_layer_names = {
        **common.LLAMA_GGUF_LAYER,
        **common.GGUF_QK_NORMS,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    }
    gguf_top_names = common.DECODER_GGUF_TOP

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        if hf.get("model_type") == "gemma3" and "text_config" in hf:  # multimodal: the LM part
            hf = {**hf["text_config"], "model_type": "gemma3_text"}
        kw = common.decoder_kwargs({"hidden_act": "gelu_pytorch_tanh", **hf}, name)
        rope = common.rope_params(hf)
        local = rope.get("sliding_attention", {})
        glob = rope.get("full_attention", rope)
        kw.update(
            family=self.name,
            norm="rmsnorm_gemma",
            sandwich_norm=True,
            qk_norm=True,
            embed_scale=True,
            mlp=common.activation(hf.get("hidden_activation", "gelu_pytorch_tanh"), gated=True),
            sliding_window=hf.get("sliding_window"),
            attn_scale=hf.get("query_pre_attn_scalar", kw["head_dim"]) ** -0.5,
            attn_softcap=hf.get("attn_logit_softcapping"),
            final_softcap=hf.get("final_logit_softcapping"),
            rope_theta=glob.get("rope_theta", hf.get("rope_theta", 1_000_000.0)),
            rope_local_theta=local.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0)),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            sliding_window_pattern=hf.get("sliding_window_pattern", 6),
            **common.rope_scaling_from_hf(glob),
        )
        return Config(**common.layer_types_from_hf(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, "Gemma3ForCausalLM", "gemma3_text")
        del out["hidden_act"], out["mlp_bias"]
        scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim**-0.5
        scalar = scale**-2.0
        return out | {
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_local_base_freq": cfg.rope_local_theta,
            "sliding_window": cfg.sliding_window,
            "sliding_window_pattern": cfg.sliding_window_pattern,
            "layer_types": common.hf_layer_types(cfg),
            # query_pre_attn_scalar ** -0.5 is our scale: write the integer it came from
            "query_pre_attn_scalar": round(scalar)
            if abs(scalar - round(scalar)) < 1e-6
            else scalar,
            "attn_logit_softcapping": cfg.attn_softcap,
            "final_logit_softcapping": cfg.final_softcap,
            "use_bidirectional_attention": False,
        }

    def fits(self, cfg: Config) -> bool:
        return cfg.norm == "rmsnorm_gemma" and cfg.sandwich_norm and cfg.qk_norm

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        return common.decoder_renames(cfg, _LAYER)

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        cfg = meta.decoder_config()
        n_layers, head_dim = cfg["num_hidden_layers"], meta.get("attention.key_length", 256)
        pattern = meta.get("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # per-layer flags: True = sliding window
            layer_types = ["sliding_attention" if s else "full_attention" for s in pattern]
        else:
            layer_types = [
                "sliding_attention" if (i + 1) % pattern else "full_attention"
                for i in range(n_layers)
            ]
        # llama.cpp scales Gemma 3 27B (62 layers) queries by hidden/heads, the others by head_dim
        scalar = cfg["hidden_size"] // cfg["num_attention_heads"] if n_layers == 62 else head_dim
        return {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            **cfg,
            "head_dim": head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_theta": meta.get("rope.freq_base", 1_000_000.0),
            # newer converters store the local base; older files leave it out (every Gemma 3: 10k)
            "rope_local_base_freq": meta.get("rope.freq_base_swa", 10_000.0),
            "sliding_window": meta.get("attention.sliding_window", 4096),
            **({"sliding_window_pattern": pattern} if isinstance(pattern, int) else {}),
            "layer_types": layer_types,
            "query_pre_attn_scalar": scalar,
            "final_logit_softcapping": meta.get("final_logit_softcapping"),
            "attn_logit_softcapping": meta.get("attn_logit_softcapping"),
            "use_bidirectional_attention": False,
        }

    def gguf_tensor_to_hf(
        self, gguf_name: str, t: torch.Tensor, hf: dict[str, Any]
    ) -> torch.Tensor:
        # the converter stores Gemma's (1 + w) norm weights as 1 + w; Q/K rows are not permuted
        return t - 1.0 if gguf_name.endswith("norm.weight") else t


register_family(Gemma3())


def _gemma3(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="gemma3",
        norm="rmsnorm_gemma",
        norm_eps=1e-6,
        norm_bias=False,
        sandwich_norm=True,
        qk_norm=True,
        positions="rope",
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        mlp="geglu",
        mlp_bias=False,
        tie_embeddings=True,
        embed_scale=True,
        sliding_window_pattern=6,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    return Config(**{**base, **kw})


_SMALL = dict(
    vocab_size=262144, n_heads=4, n_kv_heads=1, head_dim=256, max_seq_len=32768, sliding_window=512
)
register_preset("gemma3-270m", 268e6)(
    lambda: _gemma3(
        "gemma3-270m", d_model=640, n_layers=18, d_ff=2048, attn_scale=256**-0.5, **_SMALL
    )
)
register_preset("gemma3-1b", 1.0e9)(
    lambda: _gemma3(
        "gemma3-1b", d_model=1152, n_layers=26, d_ff=6912, attn_scale=256**-0.5, **_SMALL
    )
)
register_preset("gemma3-tiny")(
    lambda: _gemma3(
        "gemma3-tiny",
        vocab_size=512,
        d_model=192,
        n_layers=6,
        n_heads=4,
        n_kv_heads=1,
        head_dim=32,
        d_ff=512,
        max_seq_len=256,
        sliding_window=16,
        attn_scale=32**-0.5,
    )
)
