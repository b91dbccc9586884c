"""How many parameters train, and the closed-form counts each PEFT method should give."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class TrainableReport:
    """Trainable and total parameters (tied weights once), and the trainable ones by top module."""

    trainable: int
    total: int
    by_module: dict[str, int]

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.total)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count parameters that require gradients."""
    trainable, total, by = 0, 0, {}
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            top = (
                ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0]
            )
            by[top] = by.get(top, 0) + p.numel()
    return TrainableReport(trainable, total, by)


def lora_params(shapes: list[tuple[int, int]], r: int, dora: bool = False) -> int:
    """LoRA on Linear layers of (in, out) shapes: r*(in + out) each (+ out magnitudes for DoRA)."""
    return sum(r * (i + o) + (o if dora else 0) for i, o in shapes)


def prompt_params(n_virtual: int, d_model: int) -> int:
    return n_virtual * d_model


def prefix_params(
    n_prefix: int,
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    d_model: int = 0,
    reparam_hidden: int | None = None,
) -> int:
    """2 * L * KV * P * D direct; with the MLP: P*d + (d*h + h) + (h*out + out), out = 2*L*KV*D."""
    out = 2 * n_layers * n_kv_heads * head_dim
    if not reparam_hidden:
        return out * n_prefix
    h = reparam_hidden
    return n_prefix * d_model + d_model * h + h + h * out + out


def adapter_params(d_model: int, reduction_factor: int, n_adapters: int) -> int:
    """Each adapter: down (d*m + m) and up (m*d + d), m = d // reduction_factor."""
    m = max(1, d_model // reduction_factor)
    return n_adapters * (2 * d_model * m + m + d_model)


def norm_params(cfg) -> int:
    """One norm layer: the weight (and a bias for LayerNorm with norm_bias)."""
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


def block_params(cfg) -> int:
    """One dense transformer block: attention, MLP and its norms (closed form from the config)."""
    if cfg.n_experts:
        raise ValueError("block_params covers dense blocks; this config has a mixture of experts")
    d, H, KV, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    attn = d * H * hd + 2 * d * KV * hd + H * hd * d
    attn += (H * hd + 2 * KV * hd) * cfg.attn_qkv_bias + d * cfg.attn_out_bias
    qk = (H + KV) * hd if cfg.qk_norm_scope == "all" else 2 * hd
    attn += H * cfg.attn_sinks + qk * cfg.qk_norm
    n_in = 2 if cfg.gated else 1
    mlp = (n_in + 1) * d * f + (n_in * f + d) * cfg.mlp_bias
    norms = 2 * (cfg.pre_norm + cfg.sandwich_norm) * norm_params(cfg)
    return attn + mlp + norms


def head_params(d_model: int, n_classes: int) -> int:
    """A linear classification head with bias."""
    return d_model * n_classes + n_classes
