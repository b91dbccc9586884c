"""Phi-3: Llama with fused qkv and gate|up projections, an optional window on every layer, partial RoPE."""

from __future__ import annotations

import re
from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource, Tensors
from lmlab.families.registry import register_family, register_preset

_FUSED = re.compile(r"model\.layers\.(\d+)\.(self_attn\.qkv_proj|mlp\.gate_up_proj)\.weight")
_OURS = re.compile(r"blocks\.(\d+)\.(attn\.[qkv]|mlp\.gate|mlp\.up)\.weight")


class Phi3(Family):
    """Phi-3 (mini/medium, 4k context; the longrope 128k variants are not supported)."""

    name = "phi3"
    hf_model_types = ("phi3",)
    gguf_archs = ("phi3",)
    gguf_layer_names = {
        "attn_norm": "input_layernorm",
        "attn_qkv": "self_attn.qkv_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_up": "mlp.gate_up_proj",  # gate and up stacked, as in transformers
        "ffn_down": "mlp.down_proj",
    }
    gguf_top_names = common.DECODER_GGUF_TOP
    architecture = "Phi3ForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        rope = common.rope_params(hf)
        kw = common.decoder_kwargs({**hf, "attention_bias": False, "mlp_bias": False}, name)
        kw.update(
            family=self.name,
            sliding_window=hf.get("sliding_window") or None,
            rope_fraction=rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)),
        )
        return Config(**common.layer_types_from_hf(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, self.architecture, self.name)
        del out["attention_bias"], out["mlp_bias"]
        return out | {
            "sliding_window": cfg.sliding_window,
            "partial_rotary_factor": cfg.rope_fraction,
        }

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        return common.decoder_renames(
            cfg, (("self_attn.o_proj", "attn.o"), ("mlp.down_proj", "mlp.down"), *common.PRE_NORMS)
        )

    def hf_tensor_to_lmlab(self, name: str, t: torch.Tensor, cfg: Config, out: Tensors) -> bool:
        m = _FUSED.fullmatch(name)
        if not m:
            return False
        b = f"blocks.{m[1]}."
        if m[2] == "mlp.gate_up_proj":
            out[b + "mlp.gate.weight"], out[b + "mlp.up.weight"] = (
                p.contiguous() for p in t.chunk(2)
            )
        else:
            kv = cfg.n_kv_heads * cfg.head_dim
            parts = t.split((cfg.n_heads * cfg.head_dim, kv, kv))
            for ours, p in zip("qkv", parts, strict=True):
                out[f"{b}attn.{ours}.weight"] = p.contiguous()
        return True

    def lmlab_tensor_to_hf(
        self, name: str, t: torch.Tensor, sd: Tensors, cfg: Config, out: Tensors
    ) -> bool:
        m = _OURS.fullmatch(name)
        if not m:
            return False
        b, h = f"blocks.{m[1]}.", f"model.layers.{m[1]}."
        if m[2] == "attn.q":
            out[h + "self_attn.qkv_proj.weight"] = torch.cat(
                [sd[f"{b}attn.{n}.weight"] for n in "qkv"]
            )
        elif m[2] == "mlp.gate":
            out[h + "mlp.gate_up_proj.weight"] = torch.cat([t, sd[b + "mlp.up.weight"]])
        return True  # k, v and up travel inside the fused tensors

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        cfg = meta.decoder_config()
        head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
        cfg.pop("attention_bias")
        return {
            "architectures": [self.architecture],
            "model_type": self.name,
            **cfg,
            "hidden_act": "silu",
            "rope_theta": meta.get("rope.freq_base", 10_000.0),
            "partial_rotary_factor": meta.get("rope.dimension_count", head_dim) / head_dim,
            "sliding_window": meta.get("attention.sliding_window") or None,  # 0: none (Phi-4)
        }


register_family(Phi3())


def _phi3(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="phi3",
        norm="rmsnorm",
        norm_eps=1e-5,
        norm_bias=False,
        positions="rope",
        mlp="swiglu",
        mlp_bias=False,
        tie_embeddings=False,
        vocab_size=32064,
        max_seq_len=4096,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
    )
    return Config(**{**base, **kw})


register_preset("phi-3-mini", 3.82e9)(
    lambda: _phi3(
        "phi-3-mini", d_model=3072, n_layers=32, n_heads=32, d_ff=8192, sliding_window=2047
    )
)
register_preset("phi-3-medium", 14.0e9)(
    lambda: _phi3(
        "phi-3-medium",
        d_model=5120,
        n_layers=40,
        n_heads=40,
        n_kv_heads=10,
        d_ff=17920,
        sliding_window=2047,
    )
)
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("phi3-tiny")(
    lambda: _phi3(
        "phi3-tiny",
        sliding_window=16,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **_TINY,
    )
)
