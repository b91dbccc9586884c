"""GPT-OSS: mixture of clamped-SwiGLU experts, attention sinks, alternating sliding/full layers, YaRN."""

from __future__ import annotations

import re
from typing import Any

import torch

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family, Tensors
from lmlab.families.registry import register_family, register_preset

_LAYER = common.ATTENTION + common.PRE_NORMS + (("mlp.router", "mlp.router"),)
_HF_EXPERTS = re.compile(
    r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|gate_up_proj_bias|down_proj|down_proj_bias)"
)
_OUR_EXPERTS = re.compile(r"blocks\.(\d+)\.mlp\.(gate|up|gate_bias|up_bias|down|down_bias)")


class GPTOSS(Family):
    """OpenAI's open-weight MoE models (HF `gpt_oss`)."""

    name = "gpt-oss"
    hf_model_types = ("gpt_oss",)

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        kw = common.decoder_kwargs(hf, name)
        kw.update(
            family=self.name,
            mlp="swiglu_clamped",
            mlp_bias=True,
            attn_sinks=True,
            n_experts=hf["num_local_experts"],
            top_k=hf.get("num_experts_per_tok", 4),
            router_bias=True,
            sliding_window=hf.get("sliding_window"),
            swiglu_limit=hf.get("swiglu_limit", 7.0),
            swiglu_alpha=hf.get("swiglu_alpha", 1.702),
        )
        return Config(**common.layer_types_from_hf(hf, kw))

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        out = common.decoder_hf_config(cfg, "GptOssForCausalLM", "gpt_oss")
        del out["mlp_bias"]
        return out | {
            "num_local_experts": cfg.n_experts,
            "num_experts_per_tok": cfg.top_k,
            "sliding_window": cfg.sliding_window,
            "layer_types": common.hf_layer_types(cfg),
            "swiglu_limit": cfg.swiglu_limit,
            "swiglu_alpha": cfg.swiglu_alpha,
        }

    def fits(self, cfg: Config) -> bool:
        return cfg.attn_sinks and cfg.n_experts > 0 and cfg.mlp == "swiglu_clamped"

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        sinks = {
            f"model.layers.{i}.self_attn.sinks": f"blocks.{i}.attn.sinks"
            for i in range(cfg.n_layers)
        }
        return common.decoder_renames(cfg, _LAYER) | sinks

    def hf_tensor_to_lmlab(self, name: str, t: torch.Tensor, cfg: Config, out: Tensors) -> bool:
        m = _HF_EXPERTS.fullmatch(name)
        if not m:
            return False
        b, kind = f"blocks.{m.group(1)}.mlp.", m.group(2)
        if kind == "gate_up_proj":  # [E, d, 2f], gate/up interleaved on the last dim
            out[b + "gate"] = t[..., ::2].transpose(1, 2).contiguous()
            out[b + "up"] = t[..., 1::2].transpose(1, 2).contiguous()
        elif kind == "gate_up_proj_bias":
            out[b + "gate_bias"] = t[..., ::2].contiguous()
            out[b + "up_bias"] = t[..., 1::2].contiguous()
        elif kind == "down_proj":  # [E, f, d]
            out[b + "down"] = t.transpose(1, 2).contiguous()
        else:
            out[b + "down_bias"] = t
        return True

    def lmlab_tensor_to_hf(
        self, name: str, t: torch.Tensor, sd: Tensors, cfg: Config, out: Tensors
    ) -> bool:
        m = _OUR_EXPERTS.fullmatch(name)
        if not m:
            return False
        i, kind = m.groups()
        p = f"model.layers.{i}.mlp.experts."
        if kind == "gate":
            up = sd[f"blocks.{i}.mlp.up"]
            # [E, f, d] twice -> [E, d, 2f] with gate/up interleaved on the last dim
            pair = torch.stack([t.transpose(1, 2), up.transpose(1, 2)], -1)
            out[p + "gate_up_proj"] = pair.flatten(-2).contiguous()
        elif kind == "gate_bias":
            out[p + "gate_up_proj_bias"] = torch.stack(
                [t, sd[f"blocks.{i}.mlp.up_bias"]], -1
            ).flatten(-2)
        elif kind == "down":
            out[p + "down_proj"] = t.transpose(1, 2).contiguous()
        elif kind == "down_bias":
            out[p + "down_proj_bias"] = t
        return True  # up and up_bias are written with gate and gate_bias


register_family(GPTOSS())


def _gpt_oss(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="gpt-oss",
        vocab_size=201088,
        norm="rmsnorm",
        norm_eps=1e-5,
        norm_bias=False,
        positions="rope",
        rope_theta=150000.0,
        rope_scaling="yarn",
        rope_factor=32.0,
        rope_original_max_seq_len=4096,
        yarn_beta_fast=32.0,
        yarn_beta_slow=1.0,
        yarn_truncate=False,
        max_seq_len=131072,
        attn_qkv_bias=True,
        attn_out_bias=True,
        attn_sinks=True,
        sliding_window=128,
        sliding_window_pattern=2,
        mlp="swiglu_clamped",
        mlp_bias=True,
        router_bias=True,
        head_dim=64,
        n_heads=64,
        n_kv_heads=8,
        tie_embeddings=False,
        eos_token_id=200002,
        pad_token_id=199999,
    )
    return Config(**{**base, **kw})


register_preset("gpt-oss-20b", 20.9e9)(
    lambda: _gpt_oss("gpt-oss-20b", d_model=2880, n_layers=24, d_ff=2880, n_experts=32, top_k=4)
)
register_preset("gpt-oss-120b", 116.8e9)(
    lambda: _gpt_oss("gpt-oss-120b", d_model=2880, n_layers=36, d_ff=2880, n_experts=128, top_k=4)
)
# Same recipe at one-GPU scale (our design, 588.4M total / 352M active): GPT-OSS's o200k-harmony
# vocabulary, 16 alternating sliding/full layers of width 640, GQA 10/2 heads of 64 with sinks,
# 16 clamped-SwiGLU experts (top-4) of width 640, YaRN-free RoPE at a 4k context.
register_preset("gpt-oss-588m", 588e6)(
    lambda: _gpt_oss(
        "gpt-oss-588m",
        d_model=640,
        n_layers=16,
        n_heads=10,
        n_kv_heads=2,
        d_ff=640,
        n_experts=16,
        top_k=4,
        max_seq_len=4096,
        rope_scaling=None,
        rope_factor=1.0,
    )
)
register_preset("gpt-oss-tiny")(
    lambda: _gpt_oss(
        "gpt-oss-tiny",
        vocab_size=512,
        d_model=192,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=192,
        n_experts=8,
        top_k=2,
        sliding_window=16,
        max_seq_len=256,
        rope_original_max_seq_len=64,
        rope_factor=4.0,
        pad_token_id=None,  # GPT-OSS's 199999 is outside the 512-token vocabulary
    )
)
