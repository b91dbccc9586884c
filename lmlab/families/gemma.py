"""Gemma (1): Llama with (1 + w) RMSNorm, GeGLU, embeddings scaled by sqrt(d_model) and tied."""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource
from lmlab.families.registry import register_family, register_preset


class Gemma(Family):
    """Gemma 1 decoders; llama.cpp stores their norm weights as 1 + w and never permutes Q/K."""

    name = "gemma"
    hf_model_types = ("gemma",)
    gguf_archs = ("gemma",)
    gguf_layer_names = common.LLAMA_GGUF_LAYER
    gguf_top_names = common.DECODER_GGUF_TOP
    architecture = "GemmaForCausalLM"

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        return Config(**common.layer_types_from_hf(hf, self.gemma_kwargs(hf, name)))

    def gemma_kwargs(self, hf: dict[str, Any], name: str) -> dict[str, Any]:
        """`Config` fields of an HF Gemma config, before its layer types."""
        # old hub files say hidden_act "gelu" but mean hidden_activation's tanh approximation
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        kw = common.decoder_kwargs({**hf, "hidden_act": act}, name)
        kw.update(
            family=self.name,
            norm="rmsnorm_gemma",
            embed_scale=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
        return kw

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, self.architecture, self.name)
        return out | {"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"}

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        return common.decoder_renames(cfg, common.ATTENTION + common.PRE_NORMS + common.GATED_MLP)

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        cfg = meta.decoder_config()
        return {
            "architectures": [self.architecture],
            "model_type": self.name,
            **cfg,
            "head_dim": meta.get("attention.key_length", 256),
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_theta": meta.get("rope.freq_base", 10_000.0),
        }

    def gguf_tensor_to_hf(
        self, gguf_name: str, t: torch.Tensor, hf: dict[str, Any]
    ) -> torch.Tensor:
        return t - 1.0 if gguf_name.endswith("norm.weight") else t


register_family(Gemma())


def gemma_base(name: str, family: str, **kw: Any) -> Config:
    """A Gemma-style `Config` with the knobs every Gemma shares; `kw` sets the rest."""
    base = dict(
        name=name,
        family=family,
        norm="rmsnorm_gemma",
        norm_eps=1e-6,
        norm_bias=False,
        positions="rope",
        mlp="geglu",
        mlp_bias=False,
        tie_embeddings=True,
        embed_scale=True,
        vocab_size=256000,
        head_dim=256,
        max_seq_len=8192,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    return Config(**{**base, **kw})


register_preset("gemma-2b", 2.51e9)(
    lambda: gemma_base(
        "gemma-2b", "gemma", d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, d_ff=16384
    )
)
register_preset("gemma-7b", 8.54e9)(
    lambda: gemma_base("gemma-7b", "gemma", d_model=3072, n_layers=28, n_heads=16, d_ff=24576)
)
_TINY = dict(
    vocab_size=512, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688, max_seq_len=256
)
register_preset("gemma-tiny")(
    lambda: gemma_base("gemma-tiny", "gemma", head_dim=64, **{**_TINY, "n_kv_heads": 1})
)
