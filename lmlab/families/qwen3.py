"""Qwen3: Qwen2 without the q/k/v biases, with per-head RMSNorm on queries and keys (QK-norm)."""

from __future__ import annotations

from typing import Any

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource
from lmlab.families.qwen2 import qwen_window_config, qwen_windows
from lmlab.families.registry import register_family, register_preset


class Qwen3(Family):
    """Qwen3 dense decoders; head_dim is set explicitly (128 on every released size)."""

    name = "qwen3"
    hf_model_types = ("qwen3",)
    gguf_archs = ("qwen3",)
    gguf_layer_names = {**common.LLAMA_GGUF_LAYER, **common.GGUF_QK_NORMS}
    gguf_top_names = common.DECODER_GGUF_TOP
    architecture = "Qwen3ForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        kw = common.decoder_kwargs(hf, name)
        kw.update(family=self.name, qk_norm=True, mlp_bias=False)
        return Config(**qwen_windows(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, self.architecture, self.name)
        del out["mlp_bias"]
        return out | qwen_window_config(cfg)

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        pairs = common.ATTENTION + common.QK_NORMS + common.PRE_NORMS + common.GATED_MLP
        return common.decoder_renames(cfg, pairs)

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


register_family(Qwen3())


def _qwen3(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="qwen3",
        norm="rmsnorm",
        norm_eps=1e-6,
        norm_bias=False,
        qk_norm=True,
        positions="rope",
        rope_theta=1_000_000.0,
        mlp="swiglu",
        mlp_bias=False,
        tie_embeddings=True,
        vocab_size=151936,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        n_layers=28,
        max_seq_len=40960,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    return Config(**{**base, **kw})


register_preset("qwen3-0.6b", 596e6)(lambda: _qwen3("qwen3-0.6b", d_model=1024, d_ff=3072))
register_preset("qwen3-1.7b", 1.72e9)(lambda: _qwen3("qwen3-1.7b", d_model=2048, d_ff=6144))
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("qwen3-tiny")(
    lambda: _qwen3("qwen3-tiny", head_dim=64, bos_token_id=None, eos_token_id=None, **_TINY)
)
