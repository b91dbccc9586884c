"""Sparse attention patterns: each token sees k neighbours plus sink tokens; a per-layer schedule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparsePattern:
    """Query i may attend to key j when |i - j| <= window (j <= i too when causal) or j is a sink.

    window: neighbours on each side (causal: before) a token sees besides itself; 0 = only itself.
    sink_first: the first positions are sinks (1 = position 0, e.g. [CLS] or BOS).
    sink_ids: token ids that are sinks wherever they occur ([SEP], punctuation, ...).
    Sinks are keys every query sees; a sink query itself still sees only its window and sinks.
    Padding keys are never seen (a padded query sees itself, so no row is empty).
    """

    window: int
    sink_first: int = 0
    sink_ids: tuple[int, ...] = ()
    causal: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(
                f"window must be an int >= 0 (neighbours on each side), got {self.window!r}"
            )
        if not isinstance(self.sink_first, int) or self.sink_first < 0:
            raise ValueError(f"sink_first must be an int >= 0, got {self.sink_first!r}")
        object.__setattr__(self, "sink_ids", tuple(int(i) for i in self.sink_ids))

    @property
    def has_sinks(self) -> bool:
        """Whether any sink rule is set."""
        return self.sink_first > 0 or bool(self.sink_ids)

    def sinks(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """bool [B, T]: which key positions are sinks (never padding)."""
        B, T = tokens.shape
        out = torch.zeros(B, T, dtype=torch.bool, device=tokens.device)
        out[:, : self.sink_first] = True
        if self.sink_ids:
            ids = torch.tensor(self.sink_ids, device=tokens.device)
            out |= torch.isin(tokens, ids)
        return out if pad is None else out & pad.bool()

    def mask(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """bool [B, 1, T, T], True = query (row) may attend to key (column)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T] ids, got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if pad is not None and pad.shape != (B, T):
            raise ValueError(
                f"pad mask has shape {tuple(pad.shape)}, expected {(B, T)} like tokens"
            )
        i = torch.arange(T, device=tokens.device)
        rel = i[:, None] - i[None, :]  # query - key
        near = (rel >= 0) & (rel <= self.window) if self.causal else rel.abs() <= self.window
        sink = self.sinks(tokens, pad)[:, None, :]  # [B, 1, T] over keys
        if self.causal:
            sink = sink & (rel >= 0)
        allowed = near[None] | sink
        if pad is not None:
            allowed = allowed & (
                pad.bool()[:, None, :] | torch.eye(T, dtype=torch.bool, device=tokens.device)
            )
        return allowed[:, None]


def dense_mask(
    tokens: torch.Tensor, pad: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """The full-attention mask bool [B, 1, T, T] with the same padding rule as `SparsePattern.mask`."""
    T = tokens.shape[1]
    return SparsePattern(window=T, causal=causal).mask(tokens, pad)


def layer_schedule(spec: str | Sequence[bool], n_layers: int) -> tuple[bool, ...]:
    """Which layers are sparse: "all", "none", or one letter per layer ('s' sparse, 'd' dense).

    e.g. "ddssss" keeps the first two of six layers dense. A sequence of bools passes through.
    """
    if isinstance(spec, str):
        s = spec.strip().lower()
        if s == "all":
            return (True,) * n_layers
        if s == "none":
            return (False,) * n_layers
        if len(s) != n_layers or set(s) - {"s", "d"}:
            raise ValueError(
                f"schedule {spec!r} must be 'all', 'none', or {n_layers} letters of 's' (sparse) / "
                f"'d' (dense), one per layer, e.g. {'dd' + 's' * (n_layers - 2)!r}"
            )
        return tuple(c == "s" for c in s)
    out = tuple(bool(x) for x in spec)
    if len(out) != n_layers:
        raise ValueError(f"schedule has {len(out)} entries but the model has {n_layers} layers")
    return out


def attended_fraction(mask: torch.Tensor, pad: torch.Tensor | None = None) -> float:
    """Share of the dense (real query, real key) pairs a mask keeps: the attention cost vs dense."""
    if pad is None:
        return float(mask.float().mean())
    p = pad.bool()
    real = p[:, None, :, None] & p[:, None, None, :]
    return float((mask & real).sum() / real.sum())
