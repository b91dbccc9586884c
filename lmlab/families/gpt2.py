"""GPT-2: LayerNorm, learned positions, tanh-GELU MLP; HF stores Conv1D weights [in, out] and fuses q|k|v."""

from __future__ import annotations

import re
from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, GGUFSource, Tensors
from lmlab.families.registry import register_family, register_preset

_TO_HF_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "quick_gelu": "quick_gelu"}
_CONV1D = {"attn.c_proj": "attn.o", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
_HF_TENSOR = re.compile(
    r"h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)"
)
_OUR_TENSOR = re.compile(r"blocks\.(\d+)\.(attn\.[qkvo]|mlp\.up|mlp\.down)\.(weight|bias)")


class GPT2(Family):
    """OpenAI's GPT-2 and models saved in its layout."""

    name = "gpt2"
    hf_model_types = ("gpt2",)
    gguf_archs = ("gpt2",)
    hf_prefixes = (("transformer.", ""),)
    hf_export_prefix = "transformer."
    hf_ignored = (r"\.attn\.(masked_)?bias$",)  # causal-mask buffers of old checkpoints
    gguf_layer_prefix = "transformer.h"
    gguf_layer_names = {
        "attn_norm": "ln_1",
        "attn_qkv": "attn.c_attn",
        "attn_output": "attn.c_proj",
        "ffn_norm": "ln_2",
        "ffn_up": "mlp.c_fc",
        "ffn_down": "mlp.c_proj",
    }
    gguf_top_names = {
        "token_embd": "transformer.wte",
        "position_embd": "transformer.wpe",
        "output_norm": "transformer.ln_f",
        "output": "lm_head",
    }

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        return Config(
            name=name,
            family=self.name,
            vocab_size=hf["vocab_size"],
            d_model=hf["n_embd"],
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            max_seq_len=hf["n_positions"],
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            positions="learned",
            mlp=common.activation(hf.get("activation_function", "gelu_new")),
            attn_qkv_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            **common.special_ids(hf),
        )

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": self.name,
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_seq_len,
            "n_ctx": cfg.max_seq_len,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": _TO_HF_ACT.get(cfg.mlp, cfg.mlp),
            "tie_word_embeddings": cfg.tie_embeddings,
            **common.hf_special_ids(cfg),
        }

    def preset_tokenizer(self, cfg: Config) -> str | None:
        return "tiktoken" if cfg.vocab_size == 50257 else None  # OpenAI's GPT-2 BPE

    def fits(self, cfg: Config) -> bool:
        return cfg.norm == "layernorm" and cfg.positions == "learned" and cfg.causal

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        m: dict[str, str] = {}
        for i in range(cfg.n_layers):
            h, b = f"h.{i}.", f"blocks.{i}."
            m |= common.module_renames(h, b, (("ln_1", "ln1"), ("ln_2", "ln2")))
            m |= {h + f"{hf}.bias": b + f"{ours}.bias" for hf, ours in _CONV1D.items()}
        return m | {
            "wte.weight": "embed.weight",
            "wpe.weight": "pos_embed.weight",
            "ln_f.weight": "ln_final.weight",
            "ln_f.bias": "ln_final.bias",
            "lm_head.weight": "unembed.weight",
        }

    def hf_tensor_to_lmlab(self, name: str, t: torch.Tensor, cfg: Config, out: Tensors) -> bool:
        m = _HF_TENSOR.fullmatch(name)
        if not m:
            return False
        i, mod, kind = m.groups()
        b = f"blocks.{i}."
        if mod == "attn.c_attn":  # fused q|k|v, Conv1D stores [in, out]
            t = t.t() if kind == "weight" else t
            for part_name, part in zip("qkv", t.split(cfg.d_model, dim=0), strict=True):
                out[f"{b}attn.{part_name}.{kind}"] = part.contiguous()
            return True
        if kind == "weight":
            out[f"{b}{_CONV1D[mod]}.weight"] = t.t().contiguous()
            return True
        return False

    def lmlab_tensor_to_hf(
        self, name: str, t: torch.Tensor, sd: Tensors, cfg: Config, out: Tensors
    ) -> bool:
        m = _OUR_TENSOR.fullmatch(name)
        if not m:
            return False
        i, mod, kind = m.groups()
        if mod in ("attn.k", "attn.v"):  # written with attn.q
            return True
        if mod == "attn.q":
            fused = torch.cat([sd[f"blocks.{i}.attn.{n}.{kind}"] for n in "qkv"], 0)
            out[f"h.{i}.attn.c_attn.{kind}"] = fused.t().contiguous() if kind == "weight" else fused
            return True
        if kind != "weight":
            return False
        hf_mod = {ours: hf for hf, ours in _CONV1D.items()}[mod]
        out[f"h.{i}.{hf_mod}.weight"] = t.t().contiguous()
        return True

    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        meta = common.GGUFMeta(gf)
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": self.name,
            "vocab_size": meta.vocab_size(),
            "n_embd": meta.need("embedding_length"),
            "n_layer": meta.need("block_count"),
            "n_head": meta.need("attention.head_count"),
            "n_inner": meta.get("feed_forward_length"),
            "n_positions": meta.need("context_length"),
            "n_ctx": meta.need("context_length"),
            "layer_norm_epsilon": meta.get("attention.layer_norm_epsilon", 1e-5),
            "activation_function": "gelu_new",
            "tie_word_embeddings": meta.tied(),
            **meta.special_ids(),
        }

    def gguf_tensor_to_hf(
        self, gguf_name: str, t: torch.Tensor, hf: dict[str, Any]
    ) -> torch.Tensor:
        # HF keeps Conv1D weights as [in, out], GGUF as [out, in]
        base = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else ""
        if gguf_name.endswith(".weight") and base in (
            "attn_qkv",
            "attn_output",
            "ffn_up",
            "ffn_down",
        ):
            return t.t().contiguous()
        return t


register_family(GPT2())


def _gpt2(name: str, d: int, layers: int, heads: int) -> Config:
    return Config(
        name=name,
        family="gpt2",
        vocab_size=50257,
        d_model=d,
        n_layers=layers,
        n_heads=heads,
        max_seq_len=1024,
        norm="layernorm",
        positions="learned",
        mlp="gelu_tanh",
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    )


register_preset("gpt2", 124e6)(lambda: _gpt2("gpt2", 768, 12, 12))
register_preset("gpt2-medium", 355e6)(lambda: _gpt2("gpt2-medium", 1024, 24, 16))
register_preset("gpt2-large", 774e6)(lambda: _gpt2("gpt2-large", 1280, 36, 20))
# GPT-2 XL is announced as "1.5B"; its published checkpoint holds 1,557,611,200 parameters.
register_preset("gpt2-xl", 1.558e9)(lambda: _gpt2("gpt2-xl", 1600, 48, 25))
register_preset("gpt2-tiny")(
    lambda: _gpt2("gpt2-tiny", 256, 2, 4).replace(vocab_size=512, max_seq_len=256)
)
