"""OLMo 2: Llama with norms only after each sublayer (x + norm(f(x))) and QK-norm over whole projections."""

from __future__ import annotations

from typing import Any

from lmlab.config import Config, ConfigError
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource
from lmlab.families.registry import register_family, register_preset

_NORMS = (
    ("post_attention_layernorm", "ln1_post"),
    ("post_feedforward_layernorm", "ln2_post"),
)


class Olmo2(Family):
    """OLMo 2 decoders (AI2); llama.cpp keeps their Q/K rows as transformers has them."""

    name = "olmo2"
    hf_model_types = ("olmo2",)
    gguf_archs = ("olmo2",)
    gguf_layer_names = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        **common.GGUF_QK_NORMS,
        "post_attention_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "post_ffw_norm": "post_feedforward_layernorm",
    }
    gguf_top_names = common.DECODER_GGUF_TOP
    architecture = "Olmo2ForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        kw = common.decoder_kwargs({"rms_norm_eps": 1e-5, **hf, "mlp_bias": False}, name)
        kw.update(
            family=self.name,
            pre_norm=False,
            sandwich_norm=True,
            qk_norm=True,
            qk_norm_scope="all",
        )
        return Config(**common.layer_types_from_hf(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, self.architecture, self.name)
        del out["mlp_bias"]
        return out

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        pairs = common.ATTENTION + common.QK_NORMS + _NORMS + common.GATED_MLP
        return common.decoder_renames(cfg, pairs)

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        if meta.get("attention.sliding_window"):  # llama.cpp writes OLMo 3 as this arch too
            raise ConfigError(
                "olmo2 GGUF with sliding windows (OLMo 3) is not supported; "
                "load an OLMo 2 file, or the Hugging Face folder of an OLMo 2 model"
            )
        return {
            "architectures": [self.architecture],
            "model_type": self.name,
            **meta.decoder_config(),
            "hidden_act": "silu",
            "rope_theta": meta.get("rope.freq_base", 10_000.0),
        }


register_family(Olmo2())


def _olmo2(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="olmo2",
        norm="rmsnorm",
        norm_eps=1e-6,
        norm_bias=False,
        pre_norm=False,
        sandwich_norm=True,
        qk_norm=True,
        qk_norm_scope="all",
        positions="rope",
        rope_theta=500_000.0,
        mlp="swiglu",
        mlp_bias=False,
        tie_embeddings=False,
        vocab_size=100352,
        max_seq_len=4096,
        eos_token_id=100257,
        pad_token_id=100277,
    )
    return Config(**{**base, **kw})


register_preset("olmo-2-1b", 1.48e9)(
    lambda: _olmo2("olmo-2-1b", d_model=2048, n_layers=16, n_heads=16, d_ff=8192)
)
register_preset("olmo-2-7b", 7.30e9)(
    lambda: _olmo2("olmo-2-7b", d_model=4096, n_layers=32, n_heads=32, d_ff=11008)
)
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("olmo2-tiny")(
    lambda: _olmo2("olmo2-tiny", eos_token_id=None, pad_token_id=None, **_TINY)
)
