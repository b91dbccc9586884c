"""Gemma 2: Gemma with norms around both sublayers, logit softcapping and alternating sliding windows."""

from __future__ import annotations

from typing import Any

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import GGUFSource
from lmlab.families.gemma import Gemma, gemma_base
from lmlab.families.registry import register_family, register_preset

_NORMS = (
    ("input_layernorm", "ln1"),
    ("post_attention_layernorm", "ln1_post"),
    ("pre_feedforward_layernorm", "ln2"),
    ("post_feedforward_layernorm", "ln2_post"),
)


def alternating(n_layers: int) -> tuple[str, ...]:
    """Gemma 2's layer types: even layers slide, odd ones attend fully."""
    return tuple("sliding" if i % 2 == 0 else "full" for i in range(n_layers))


class Gemma2(Gemma):
    """Gemma 2 decoders: layer 0 slides, layer 1 attends fully, and so on."""

    name = "gemma2"
    hf_model_types = ("gemma2",)
    gguf_archs = ("gemma2",)
    gguf_layer_names = {
        **common.LLAMA_GGUF_LAYER,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    }
    architecture = "Gemma2ForCausalLM"

    def gemma_kwargs(self, hf: dict[str, Any], name: str) -> dict[str, Any]:
        kw = super().gemma_kwargs(hf, name)
        kw.update(
            family=self.name,
            sandwich_norm=True,
            attn_scale=hf.get("query_pre_attn_scalar", kw["head_dim"]) ** -0.5,
            attn_softcap=hf.get("attn_logit_softcapping"),
            final_softcap=hf.get("final_logit_softcapping"),
            sliding_window=hf.get("sliding_window"),
        )
        if hf.get("layer_types") is None and kw["sliding_window"] is not None:
            kw["layer_types"] = alternating(kw["n_layers"])
        return kw

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        scalar = cfg.attn_scale**-2 if cfg.attn_scale is not None else cfg.head_dim
        return super().hf_config(cfg) | {
            "query_pre_attn_scalar": round(scalar)
            if abs(scalar - round(scalar)) < 1e-6
            else scalar,
            "attn_logit_softcapping": cfg.attn_softcap,
            "final_logit_softcapping": cfg.final_softcap,
            "sliding_window": cfg.sliding_window,
            "layer_types": common.hf_layer_types(cfg),
        }

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        return common.decoder_renames(cfg, common.ATTENTION + _NORMS + common.GATED_MLP)

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        out = super().gguf_hf_config(gf)
        # llama.cpp scales Gemma 2 27B (46 layers) queries by hidden/heads, the others by head_dim
        big = out["num_hidden_layers"] == 46
        return out | {
            "architectures": [self.architecture],
            "model_type": self.name,
            "query_pre_attn_scalar": out["hidden_size"] // out["num_attention_heads"]
            if big
            else out["head_dim"],
            "attn_logit_softcapping": meta.get("attn_logit_softcapping"),
            "final_logit_softcapping": meta.get("final_logit_softcapping"),
            "sliding_window": meta.get("attention.sliding_window", 4096),
        }


register_family(Gemma2())


def _gemma2(name: str, **kw: Any) -> Config:
    base = dict(
        sandwich_norm=True,
        attn_scale=256**-0.5,
        attn_softcap=50.0,
        final_softcap=30.0,
        sliding_window=4096,
        layer_types=alternating(kw["n_layers"]),
    )
    return gemma_base(name, "gemma2", **{**base, **kw})


register_preset("gemma-2-2b", 2.61e9)(
    lambda: _gemma2(
        "gemma-2-2b",
        d_model=2304,
        n_layers=26,
        n_heads=8,
        n_kv_heads=4,
        d_ff=9216,
    )
)
register_preset("gemma-2-9b", 9.24e9)(
    lambda: _gemma2(
        "gemma-2-9b",
        d_model=3584,
        n_layers=42,
        n_heads=16,
        n_kv_heads=8,
        d_ff=14336,
    )
)
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("gemma2-tiny")(
    lambda: _gemma2("gemma2-tiny", head_dim=64, attn_scale=64**-0.5, sliding_window=16, **_TINY)
)
