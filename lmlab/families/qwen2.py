"""Qwen2 / Qwen2.5: Llama with q/k/v biases (no output bias) and optional sliding windows on the top layers."""

from __future__ import annotations

from typing import Any

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource
from lmlab.families.registry import register_family, register_preset


def qwen_windows(hf: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
    """`kw` with Qwen's window knobs: a window only with `use_sliding_window`, on layers >= max_window_layers."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    kw["sliding_window"] = window
    if hf.get("layer_types") is None and window is not None:
        first = hf.get("max_window_layers", kw["n_layers"])
        kw["layer_types"] = tuple(
            "sliding" if i >= first else "full" for i in range(kw["n_layers"])
        )
    if window is None and "sliding_attention" in (hf.get("layer_types") or ()):
        hf = {**hf, "layer_types": None}  # transformers keeps the kinds but drops the window
    return common.layer_types_from_hf(hf, kw)


def qwen_window_config(cfg: Config) -> dict[str, Any]:
    """HF window keys of a Qwen config: the inverse of `qwen_windows`."""
    return {
        "use_sliding_window": cfg.sliding_window is not None,
        "sliding_window": cfg.sliding_window,
        "max_window_layers": cfg.n_layers,
        "layer_types": common.hf_layer_types(cfg),
    }


class Qwen2(Family):
    """Qwen2 and Qwen2.5 decoders (no Q/K permutation in GGUF: llama.cpp rotates them NeoX-style)."""

    name = "qwen2"
    hf_model_types = ("qwen2",)
    gguf_archs = ("qwen2",)
    gguf_layer_names = common.LLAMA_GGUF_LAYER
    gguf_top_names = common.DECODER_GGUF_TOP
    architecture = "Qwen2ForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        kw = common.decoder_kwargs(hf, name)
        kw.update(family=self.name, attn_qkv_bias=True, attn_out_bias=False, mlp_bias=False)
        return Config(**qwen_windows(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, self.architecture, self.name)
        del out["attention_bias"], out["mlp_bias"]
        return out | qwen_window_config(cfg)

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        return common.decoder_renames(cfg, common.ATTENTION + common.PRE_NORMS + common.GATED_MLP)

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        cfg = meta.decoder_config()
        return {
            "architectures": [self.architecture],
            "model_type": self.name,
            **cfg,
            "head_dim": meta.get("attention.key_length")
            or cfg["hidden_size"] // cfg["num_attention_heads"],
            "hidden_act": "silu",
            "rope_theta": meta.get("rope.freq_base", 1_000_000.0),
        }


register_family(Qwen2())


def _qwen2(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="qwen2",
        norm="rmsnorm",
        norm_eps=1e-6,
        norm_bias=False,
        positions="rope",
        rope_theta=1_000_000.0,
        attn_qkv_bias=True,
        mlp="swiglu",
        mlp_bias=False,
        tie_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
    )
    return Config(**{**base, **kw})


register_preset("qwen2.5-0.5b", 494e6)(
    lambda: _qwen2(
        "qwen2.5-0.5b",
        vocab_size=151936,
        d_model=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        d_ff=4864,
        max_seq_len=32768,
    )
)
register_preset("qwen2.5-1.5b", 1.54e9)(
    lambda: _qwen2(
        "qwen2.5-1.5b",
        vocab_size=151936,
        d_model=1536,
        n_layers=28,
        n_heads=12,
        n_kv_heads=2,
        d_ff=8960,
        max_seq_len=131072,
    )
)
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("qwen2-tiny")(
    lambda: _qwen2("qwen2-tiny", bos_token_id=None, eos_token_id=None, **_TINY)
)
