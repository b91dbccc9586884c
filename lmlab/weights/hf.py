"""Hugging Face transformers layout <-> lmlab: config translation and one weight-name map per family.

Format quirks are handled here, at load time: GPT-2's Conv1D weights are transposed and its fused
`c_attn` split into q/k/v; GPT-OSS's interleaved gate/up expert tensors are de-interleaved; tied
output embeddings are dropped or restored.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from lmlab.config import Config, ConfigError

# ---------------------------------------------------------------------------- configs

_MODEL_TYPES = ("gpt2", "llama", "mistral", "gemma3_text", "gemma3", "gpt_oss", "bert")


def config_from_hf(hf: dict[str, Any], name: str | None = None) -> Config:
    """Translate a transformers `config.json` dict into a `Config`."""
    mt = hf.get("model_type")
    if mt == "gemma3" and "text_config" in hf:  # multimodal wrapper: take the language model
        hf, mt = {**hf["text_config"], "model_type": "gemma3_text"}, "gemma3_text"
    if mt not in _MODEL_TYPES:
        raise ConfigError(
            f"model_type {mt!r} is not supported; supported: {', '.join(_MODEL_TYPES)}"
        )
    name = name or hf.get("_name_or_path") or mt
    ids = {k: _first(hf.get(k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if mt == "gpt2":
        return Config(
            name=name,
            family="gpt2",
            vocab_size=hf["vocab_size"],
            d_model=hf["n_embd"],
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            max_seq_len=hf["n_positions"],
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            positions="learned",
            mlp=_act(hf.get("activation_function", "gelu_new")),
            attn_qkv_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            **ids,
        )
    if mt == "bert":
        return Config(
            name=name,
            family="bert",
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"],
            norm="layernorm",
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            post_norm=True,
            embed_norm=True,
            positions="learned",
            causal=False,
            mlp=_act(hf.get("hidden_act", "gelu")),
            attn_qkv_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            type_vocab_size=hf.get("type_vocab_size", 2),
            pooler=True,
            lm_head=False,
            tie_embeddings=False,
            **ids,
        )
    # Llama-like decoders: llama, mistral, gemma3, gpt-oss
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    L = hf["num_hidden_layers"]
    kw: dict[str, Any] = dict(
        name=name,
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=L,
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or d // heads,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_bias=False,
        positions="rope",
        attn_qkv_bias=hf.get("attention_bias", False),
        attn_out_bias=hf.get("attention_bias", False),
        mlp="swiglu",
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        **ids,
    )
    rope = _rope_params(hf)
    kw["rope_theta"] = rope.get("rope_theta", 10000.0)
    kw.update(_rope_scaling(rope))
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    if mt == "llama":
        kw["family"] = "llama"
        kw["mlp"] = _act(hf.get("hidden_act", "silu"), gated=True)
    elif mt == "mistral":
        kw.update(
            family="mistral",
            mlp=_act(hf.get("hidden_act", "silu"), gated=True),
            sliding_window=window,
        )
    elif mt == "gemma3_text":
        local = rope.get("sliding_attention", {})
        glob = rope.get("full_attention", rope)
        kw.update(
            family="gemma3",
            norm="rmsnorm_gemma",
            sandwich_norm=True,
            qk_norm=True,
            embed_scale=True,
            mlp=_act(hf.get("hidden_activation", "gelu_pytorch_tanh"), gated=True),
            sliding_window=window,
            attn_scale=hf.get("query_pre_attn_scalar", kw["head_dim"]) ** -0.5,
            attn_softcap=hf.get("attn_logit_softcapping"),
            final_softcap=hf.get("final_logit_softcapping"),
            rope_theta=glob.get("rope_theta", hf.get("rope_theta", 1_000_000.0)),
            rope_local_theta=local.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0)),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
        kw.update(_rope_scaling(glob))
        kw["sliding_window_pattern"] = hf.get("sliding_window_pattern", 6)
    elif mt == "gpt_oss":
        kw.update(
            family="gpt-oss",
            mlp="swiglu_clamped",
            mlp_bias=True,
            attn_sinks=True,
            n_experts=hf["num_local_experts"],
            top_k=hf.get("num_experts_per_tok", 4),
            router_bias=True,
            sliding_window=window,
            swiglu_limit=hf.get("swiglu_limit", 7.0),
            swiglu_alpha=hf.get("swiglu_alpha", 1.702),
        )
    if layer_types is not None:
        kw["layer_types"] = tuple(
            "sliding" if t == "sliding_attention" else "full" for t in layer_types
        )
    elif kw.get("sliding_window") is None:
        kw["layer_types"] = ("full",) * L
    if kw.get("sliding_window") is None and "sliding" in kw.get("layer_types", ()):
        raise ConfigError("config.json marks sliding layers but gives no sliding_window")
    return Config(**kw)


def _first(x: Any) -> int | None:
    return x[0] if isinstance(x, list) and x else (x if isinstance(x, int) else None)


def _act(name: str, gated: bool = False) -> str:
    table = {
        "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh",
        "gelu": "gelu",
        "relu": "relu",
        "quick_gelu": "quick_gelu",
        "silu": "swiglu",
        "swish": "swiglu",
        "gelu_fast": "gelu_tanh",
    }
    if name not in table:
        raise ConfigError(f"activation {name!r} is not supported; supported: {', '.join(table)}")
    act = table[name]
    if gated:
        return {"swiglu": "swiglu", "gelu_tanh": "geglu", "gelu": "geglu"}.get(act, act)
    return act


def _rope_params(hf: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps RoPE settings in `rope_parameters`; older files use rope_theta + rope_scaling."""
    rp = hf.get("rope_parameters")
    if rp:
        return dict(rp)
    out = dict(hf.get("rope_scaling") or {})
    if "rope_theta" in hf:
        out["rope_theta"] = hf["rope_theta"]
    return out


def _rope_scaling(rope: dict[str, Any]) -> dict[str, Any]:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in (None, "default"):
        return {"rope_scaling": None, "rope_factor": 1.0}
    if kind not in ("linear", "llama3", "yarn"):
        raise ConfigError(
            f"rope scaling {kind!r} is not supported; supported: linear, llama3, yarn"
        )
    out: dict[str, Any] = {"rope_scaling": kind, "rope_factor": float(rope.get("factor", 1.0))}
    if kind in ("llama3", "yarn"):
        out["rope_original_max_seq_len"] = int(rope["original_max_position_embeddings"])
    if kind == "llama3":
        out.update(
            rope_low_freq_factor=rope.get("low_freq_factor", 1.0),
            rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
        )
    if kind == "yarn":
        out.update(
            yarn_beta_fast=rope.get("beta_fast") or 32.0,
            yarn_beta_slow=rope.get("beta_slow") or 1.0,
            yarn_truncate=rope.get("truncate", True),
            yarn_attention_factor=rope.get("attention_factor"),
        )
    return out


# ---------------------------------------------------------------------------- weight names

Tensors = dict[str, torch.Tensor]


def _renames(cfg: Config) -> dict[str, str]:
    """HF name -> lmlab name for every tensor that is only renamed (no reshaping)."""
    fam, m = cfg.family, {}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        if fam == "gpt2":
            h = f"h.{i}."
            m |= {
                h + "ln_1.weight": b + "ln1.weight",
                h + "ln_1.bias": b + "ln1.bias",
                h + "ln_2.weight": b + "ln2.weight",
                h + "ln_2.bias": b + "ln2.bias",
                h + "attn.c_proj.bias": b + "attn.o.bias",
                h + "mlp.c_fc.bias": b + "mlp.up.bias",
                h + "mlp.c_proj.bias": b + "mlp.down.bias",
            }
        elif fam == "bert":
            h = f"encoder.layer.{i}."
            for hf_n, ours in (
                ("attention.self.query", "attn.q"),
                ("attention.self.key", "attn.k"),
                ("attention.self.value", "attn.v"),
                ("attention.output.dense", "attn.o"),
                ("attention.output.LayerNorm", "ln1"),
                ("intermediate.dense", "mlp.up"),
                ("output.dense", "mlp.down"),
                ("output.LayerNorm", "ln2"),
            ):
                m |= {
                    f"{h}{hf_n}.weight": f"{b}{ours}.weight",
                    f"{h}{hf_n}.bias": f"{b}{ours}.bias",
                }
        else:  # llama-like
            h = f"model.layers.{i}."
            pairs = [
                ("self_attn.q_proj", "attn.q"),
                ("self_attn.k_proj", "attn.k"),
                ("self_attn.v_proj", "attn.v"),
                ("self_attn.o_proj", "attn.o"),
                ("input_layernorm", "ln1"),
            ]
            if fam == "gemma3":
                pairs += [
                    ("post_attention_layernorm", "ln1_post"),
                    ("pre_feedforward_layernorm", "ln2"),
                    ("post_feedforward_layernorm", "ln2_post"),
                    ("self_attn.q_norm", "attn.q_norm"),
                    ("self_attn.k_norm", "attn.k_norm"),
                ]
            else:
                pairs += [("post_attention_layernorm", "ln2")]
            if fam == "gpt-oss":
                pairs += [("mlp.router", "mlp.router")]
                m[h + "self_attn.sinks"] = b + "attn.sinks"
            else:
                pairs += [
                    ("mlp.gate_proj", "mlp.gate"),
                    ("mlp.up_proj", "mlp.up"),
                    ("mlp.down_proj", "mlp.down"),
                ]
            for hf_n, ours in pairs:
                m |= {
                    f"{h}{hf_n}.weight": f"{b}{ours}.weight",
                    f"{h}{hf_n}.bias": f"{b}{ours}.bias",
                }
    if fam == "gpt2":
        m |= {
            "wte.weight": "embed.weight",
            "wpe.weight": "pos_embed.weight",
            "ln_f.weight": "ln_final.weight",
            "ln_f.bias": "ln_final.bias",
            "lm_head.weight": "unembed.weight",
        }
    elif fam == "bert":
        e = "embeddings."
        m |= {
            e + "word_embeddings.weight": "embed.weight",
            e + "position_embeddings.weight": "pos_embed.weight",
            e + "token_type_embeddings.weight": "token_type_embed.weight",
            e + "LayerNorm.weight": "embed_norm.weight",
            e + "LayerNorm.bias": "embed_norm.bias",
            "pooler.dense.weight": "pooler.weight",
            "pooler.dense.bias": "pooler.bias",
        }
    else:
        m |= {
            "model.embed_tokens.weight": "embed.weight",
            "model.norm.weight": "ln_final.weight",
            "lm_head.weight": "unembed.weight",
        }
    return m


_PREFIXES = {  # wrappers around the bare model, stripped before mapping
    "gpt2": ("transformer.",),
    "bert": ("bert.",),
    "gemma3": ("model.language_model.", "language_model.model."),
}
_IGNORED = re.compile(
    r"(\.attn\.bias|\.attn\.masked_bias|position_ids|rotary_emb\.inv_freq|^cls\.)$|^cls\."
)


def _normalize(sd: Tensors, cfg: Config) -> Tensors:
    """Strip wrapper prefixes and drop buffers that are not weights."""
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES.get(cfg.family, ()):
            if k.startswith(p):
                k = ("model." + k[len(p) :]) if cfg.family == "gemma3" else k[len(p) :]
                break
        if _IGNORED.search(k):
            continue
        out[k] = v
    return out


def hf_to_lmlab(sd: Tensors, cfg: Config) -> Tensors:
    """Convert a transformers state dict of `cfg.family` into lmlab names and layouts."""
    sd = _normalize(sd, cfg)
    names = _renames(cfg)
    out: Tensors = {}
    unknown = []
    for k, v in sd.items():
        if k in names:
            out[names[k]] = v
        elif not _special_to_lmlab(k, v, cfg, out):
            unknown.append(k)
    if unknown:
        raise KeyError(
            f"{len(unknown)} tensors have no place in a {cfg.family} model, e.g. {unknown[:5]}; "
            "is this checkpoint really of that family?"
        )
    if cfg.tie_embeddings:
        out.pop("unembed.weight", None)
    return out


def _special_to_lmlab(k: str, v: torch.Tensor, cfg: Config, out: Tensors) -> bool:
    """Tensors that need reshaping, not only renaming. Returns False if `k` is unknown."""
    if cfg.family == "gpt2":
        m = re.fullmatch(
            r"h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)", k
        )
        if not m:
            return False
        i, mod, kind = m.groups()
        b = f"blocks.{i}."
        if mod == "attn.c_attn":  # fused q|k|v, Conv1D stores [in, out]
            t = v.t() if kind == "weight" else v
            for name, part in zip("qkv", t.split(cfg.d_model, dim=0), strict=True):
                out[f"{b}attn.{name}.{kind}"] = part.contiguous()
            return True
        if kind == "weight":
            ours = {"attn.c_proj": "attn.o", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}[mod]
            out[f"{b}{ours}.weight"] = v.t().contiguous()
            return True
        return False
    if cfg.family == "gpt-oss":
        m = re.fullmatch(
            r"model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|gate_up_proj_bias|down_proj|down_proj_bias)",
            k,
        )
        if not m:
            return False
        b = f"blocks.{m.group(1)}.mlp."
        kind = m.group(2)
        if kind == "gate_up_proj":  # [E, d, 2f], gate/up interleaved on the last dim
            out[b + "gate"] = v[..., ::2].transpose(1, 2).contiguous()
            out[b + "up"] = v[..., 1::2].transpose(1, 2).contiguous()
        elif kind == "gate_up_proj_bias":
            out[b + "gate_bias"], out[b + "up_bias"] = (
                v[..., ::2].contiguous(),
                v[..., 1::2].contiguous(),
            )
        elif kind == "down_proj":  # [E, f, d]
            out[b + "down"] = v.transpose(1, 2).contiguous()
        else:
            out[b + "down_bias"] = v
        return True
    return False


def lmlab_to_hf(sd: Tensors, cfg: Config) -> Tensors:
    """Inverse of `hf_to_lmlab`: lmlab state dict -> transformers names and layouts (for export)."""
    inverse = {v: k for k, v in _renames(cfg).items()}
    out: Tensors = {}
    for k, v in sd.items():
        if k in inverse:
            out[inverse[k]] = v
            continue
        m = re.fullmatch(
            r"blocks\.(\d+)\.(attn\.[qkvo]|mlp\.up|mlp\.down|mlp\.gate|mlp\.up_bias|mlp\.gate_bias|"
            r"mlp\.down_bias)(?:\.(weight|bias))?",
            k,
        )
        if not m:
            raise KeyError(f"no transformers name for {k!r} in family {cfg.family}")
        i, mod, kind = m.groups()
        if cfg.family == "gpt2":
            if mod in ("attn.q", "attn.k", "attn.v"):
                if mod == "attn.q":
                    parts = [sd[f"blocks.{i}.attn.{n}.{kind}"] for n in "qkv"]
                    fused = torch.cat(parts, 0)
                    out[f"h.{i}.attn.c_attn.{kind}"] = (
                        fused.t().contiguous() if kind == "weight" else fused
                    )
                continue
            hf_mod = {"attn.o": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}[mod]
            out[f"h.{i}.{hf_mod}.weight"] = v.t().contiguous()
        elif cfg.family == "gpt-oss":
            p = f"model.layers.{i}.mlp.experts."
            if mod == "mlp.gate":
                up = sd[f"blocks.{i}.mlp.up"]
                out[p + "gate_up_proj"] = (
                    torch.stack([v, up], -1).flatten(-2).transpose(1, 2).contiguous()
                )
            elif mod == "mlp.gate_bias":
                out[p + "gate_up_proj_bias"] = torch.stack(
                    [v, sd[f"blocks.{i}.mlp.up_bias"]], -1
                ).flatten(-2)
            elif mod == "mlp.down":
                out[p + "down_proj"] = v.transpose(1, 2).contiguous()
            elif mod == "mlp.down_bias":
                out[p + "down_proj_bias"] = v
        else:
            raise KeyError(f"no transformers name for {k!r} in family {cfg.family}")
    if cfg.family == "gpt2":
        out = {
            ("lm_head.weight" if k == "lm_head.weight" else "transformer." + k): v
            for k, v in out.items()
        }
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def load_state_dict(model: torch.nn.Module, hf_sd: Tensors, *, strict: bool = True) -> None:
    """Copy a transformers state dict into an lmlab `Transformer` through the family's name map.

    With `strict`, every parameter of the model must be provided, with the right shape.
    """
    cfg: Config = model.cfg
    ours = hf_to_lmlab(hf_sd, cfg)
    expected = model.state_dict()
    if cfg.tie_embeddings:
        expected.pop("unembed.weight", None)
    for k, v in ours.items():
        if k not in expected:
            raise KeyError(
                f"converted tensor {k!r} does not exist in this model ({cfg.name}); the checkpoint "
                "was made for a different architecture"
            )
        if expected[k].shape != v.shape:
            raise ValueError(
                f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(expected[k].shape)}; "
                "the config does not match these weights"
            )
    missing = [k for k in expected if k not in ours]
    if strict and missing:
        raise KeyError(
            f"the checkpoint lacks {len(missing)} tensors of this model, e.g. {missing[:5]}"
        )
    model.load_state_dict(ours, strict=False)
