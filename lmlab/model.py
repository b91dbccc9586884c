"""The one `Transformer`: GPT-2, Llama, SmolLM2, Mistral, Gemma 3, GPT-OSS and BERT from a `Config`.

Read top to bottom: norms, rotary positions, attention, MLPs (dense and mixture of experts),
the block, the model. Weight-format quirks live in `lmlab.weights`, never here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.cache import KVCache, LayerCache
from lmlab.config import Config
from lmlab.hooks import HookedMixin, HookPoint
from lmlab.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy

# ---------------------------------------------------------------------------- norms


class Norm(nn.Module):
    """LayerNorm, RMSNorm, or Gemma's RMSNorm that scales by (1 + w); computed in float32."""

    def __init__(self, dim: int, kind: str, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        init = 0.0 if kind == "rmsnorm_gemma" else 1.0
        self.weight = nn.Parameter(torch.full((dim,), init))
        self.bias = nn.Parameter(torch.zeros(dim)) if kind == "layernorm" and bias else None
        self.hook_scale = HookPoint()  # [..., 1]: the divisor (std or rms), only when hooked
        self.hook_normalized = HookPoint()  # [..., dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hook_scale.active:
            return self._forward_with_scale(x)
        if self.kind == "layernorm":
            out = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        else:
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            if self.kind == "rmsnorm":
                out = self.weight * xf.to(x.dtype)
            else:
                out = (xf * self.weight_applied()).to(x.dtype)
        return self.hook_normalized(out)

    def _forward_with_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit form exposing the scale, for interpretability (same numbers in float32)."""
        out = self.linear(x, self.hook_scale(self.divisor(x)))
        out = out + (self.bias.float() if self.bias is not None else 0.0)
        return self.hook_normalized(out.to(x.dtype))

    def weight_applied(self) -> torch.Tensor:
        """The float32 per-channel factor this norm multiplies by: w, or (1 + w) for Gemma."""
        w = self.weight.float()
        return w + 1.0 if self.kind == "rmsnorm_gemma" else w

    def divisor(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 1] float32: what this norm divides `x` by (its std for LayerNorm, else its RMS)."""
        xf = x.float()
        if self.kind == "layernorm":
            xf = xf - xf.mean(-1, keepdim=True)
        return (xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """This norm as a linear map for a fixed `scale`, bias left out (float32): center, divide, weight.

        With `scale = divisor(x)` it is the norm itself; with the scale of a whole residual stream
        it maps each additive component of that stream (direct logit attribution).
        """
        xf = x.float()
        if self.kind == "layernorm":
            xf = xf - xf.mean(-1, keepdim=True)
        return xf / scale * self.weight_applied().to(xf.device)


# ---------------------------------------------------------------------------- rotary positions


def rope_inv_freq(cfg: Config, base: float) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] for one RoPE base and the cos/sin scale (YaRN's mscale)."""
    dim = cfg.rope_dim
    inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    factor, scale = cfg.rope_factor, 1.0
    if cfg.rope_scaling == "linear":
        inv = inv / factor
    elif cfg.rope_scaling == "llama3":  # Llama 3.1: stretch only the long wavelengths
        old = cfg.rope_original_max_seq_len
        low_wl, high_wl = old / cfg.rope_low_freq_factor, old / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        mixed = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(
            wavelen > low_wl, inv / factor, torch.where(wavelen < high_wl, inv, mixed)
        )
    elif cfg.rope_scaling == "yarn":
        # YaRN (Peng et al. 2023): interpolate low, extrapolate high frequencies
        old = cfg.rope_original_max_seq_len

        def correction_dim(rotations: float) -> float:
            return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = correction_dim(cfg.yarn_beta_fast), correction_dim(cfg.yarn_beta_slow)
        if cfg.yarn_truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        inv = (inv / factor) * ramp + inv * (1 - ramp)
        scale = cfg.yarn_attention_factor or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
    return inv, scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves of the last dim: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).

    x: [B, H, T, D]; cos: [B, 1, T, D] (the half-width cosines twice), sin: [B, 1, T, D] (the
    sines negated, then as they are), so that swapping the halves makes it two products and a sum.
    With partial rotary (cos narrower than x), only the leading dims rotate; the rest pass through.
    """
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :r], cos, sin), x[..., r:]), -1)
    return x * cos + x.roll(r // 2, -1) * sin


# ---------------------------------------------------------------------------- attention


def _float_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether to run low-precision attention in float32: on CPU, with gradients needed."""
    if q.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    if not (q.requires_grad or k.requires_grad):
        return False
    return q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")


class Attention(nn.Module):
    """Multi-head attention with GQA/MQA, RoPE, QK-norm, sliding windows, sinks and softcapping.

    Uses fused `scaled_dot_product_attention` unless a hook asks for scores or pattern, in which
    case the explicit softmax path runs; both give the same outputs.
    """

    def __init__(self, cfg: Config, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, kv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, kv, d
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else d**-0.5
        self.window = cfg.window(layer)
        self.q = nn.Linear(cfg.d_model, h * d, bias=cfg.attn_qkv_bias)
        self.k = nn.Linear(cfg.d_model, kv * d, bias=cfg.attn_qkv_bias)
        self.v = nn.Linear(cfg.d_model, kv * d, bias=cfg.attn_qkv_bias)
        self.o = nn.Linear(h * d, cfg.d_model, bias=cfg.attn_out_bias)
        qk_kind = "rmsnorm" if cfg.norm == "layernorm" else cfg.norm
        whole = cfg.qk_norm_scope == "all"  # one norm over all heads' dims, not per head
        self.q_norm = Norm(h * d if whole else d, qk_kind, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = Norm(kv * d if whole else d, qk_kind, cfg.norm_eps) if cfg.qk_norm else None
        self.sinks = nn.Parameter(torch.zeros(h)) if cfg.attn_sinks else None
        # Prefix tuning: extra keys/values [KV, P, D] or [B, KV, P, D] every query attends to (no RoPE).
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        # TransformerLens shapes: q/z [B, T, H, D]; k/v [B, S, KV, D]; scores/pattern [B, H, T, S]
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z = HookPoint()
        # [B, T, H, d_model], per-head outputs, computed only when hooked
        self.hook_result = HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x: [B, T, d_model]; mask: bool [B|1, 1, T, S] (True = may attend) or None for plain causal.

        With `cache`, the new keys/values are written into it and the queries attend to all cached
        ones (`mask` then covers the cached length S). A `prefix` is prepended to the keys/values.
        """
        B, T, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        q = self.hook_q(q.view(B, T, self.n_heads, self.head_dim))
        k = self.hook_k(k.view(B, T, self.n_kv_heads, self.head_dim))
        v = self.hook_v(v.view(B, T, self.n_kv_heads, self.head_dim))
        if self.q_norm is not None and self.cfg.qk_norm_scope == "all":
            q, k = self.q_norm(q.flatten(-2)).view_as(q), self.k_norm(k.flatten(-2)).view_as(k)
        elif self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if self.hook_rot_q.active or self.hook_rot_k.active:
                q = self.hook_rot_q(q.transpose(1, 2)).transpose(1, 2)
                k = self.hook_rot_k(k.transpose(1, 2)).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v)
        if self.prefix is not None:
            k, v, mask = self._with_prefix(k, v, mask, q.shape[2])
        explicit = (
            self.hook_attn_scores.active
            or self.hook_pattern.active
            or self.cfg.attn_softcap is not None
        )
        z = self._explicit(q, k, v, mask) if explicit else self._fused(q, k, v, mask)
        z = self.hook_z(z.transpose(1, 2))  # [B, T, H, D]
        if self.hook_result.active:
            w_o = self.o.weight.view(-1, self.n_heads, self.head_dim)  # [d_model, H, D]
            result = self.hook_result(torch.einsum("bthd,mhd->bthm", z, w_o))
            out = result.sum(2)
            return out + self.o.bias if self.o.bias is not None else out
        return self.o(z.reshape(B, T, -1))

    def _with_prefix(
        self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, T: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prepend the prefix keys/values; every query may attend to all of them."""
        pk, pv = self.prefix
        B, _, S, _ = k.shape
        if pk.dim() == 3:
            pk, pv = pk.unsqueeze(0).expand(B, -1, -1, -1), pv.unsqueeze(0).expand(B, -1, -1, -1)
        if pk.shape[0] != B or pk.shape[1] != self.n_kv_heads or pk.shape[-1] != self.head_dim:
            raise ValueError(
                f"attention prefix has shape {tuple(pk.shape)}; expected [{self.n_kv_heads}, P, "
                f"{self.head_dim}] or [{B}, {self.n_kv_heads}, P, {self.head_dim}]"
            )
        P = pk.shape[2]
        if mask is None:
            if self.cfg.causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=k.device).tril(S - T)[None, None]
            else:
                mask = torch.ones(1, 1, T, S, dtype=torch.bool, device=k.device)
        full = torch.ones(*mask.shape[:2], T, P, dtype=torch.bool, device=k.device)
        mask = torch.cat([full.expand(mask.shape[0], -1, -1, -1), mask], -1)
        return torch.cat([pk.to(k.dtype), k], 2), torch.cat([pv.to(v.dtype), v], 2), mask

    def _fused(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if _float_attention(q, k):
            # the CPU kernel's bf16/fp16 backward is slower than its float32 one (2.6x for 31
            # queries on 129 keys, 1.2x at 256 causal): when gradients flow, attend in float32
            low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
            with torch.autocast("cpu", enabled=False):
                return self._sdpa(q.float(), k.float(), v.float(), mask).to(low)
        return self._sdpa(q, k, v, mask)

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if self.sinks is not None:
            # A sink is a key whose logit is the learned per-head value and whose value is zero:
            # append a zero key/value and put the sink logit in the additive mask's extra column.
            B, _, T, _ = q.shape
            S = k.shape[2]
            zeros = k.new_zeros(B, k.shape[1], 1, k.shape[-1])
            k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
            bias = torch.zeros(1, 1, T, S, dtype=q.dtype, device=q.device)
            if mask is None:
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            bias = bias.masked_fill(~mask, float("-inf"))
            sink_col = self.sinks.to(q.dtype).view(1, -1, 1, 1).expand(bias.shape[0], -1, T, 1)
            mask = torch.cat([bias.expand(sink_col.shape[0], self.n_heads, T, -1), sink_col], -1)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.cfg.dropout if self.training else 0.0,
            is_causal=mask is None and self.cfg.causal,
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)).float() * self.scale  # [B, H, T, S]
        if self.cfg.attn_softcap is not None:
            scores = torch.tanh(scores / self.cfg.attn_softcap) * self.cfg.attn_softcap
        T, S = scores.shape[-2:]
        if mask is None and self.cfg.causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        if self.sinks is not None:
            sink = self.sinks.float().view(1, -1, 1, 1).expand(scores.shape[0], -1, T, 1)
            pattern = torch.softmax(torch.cat([scores, sink], -1), dim=-1)[..., :-1]
        else:
            pattern = torch.softmax(scores, dim=-1)
        pattern = self.hook_pattern(pattern.to(q.dtype))
        pattern = F.dropout(pattern, self.cfg.dropout, self.training)
        return pattern @ v


# ---------------------------------------------------------------------------- feed-forward


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP nonlinearity; for gated kinds, the function applied to the gate."""
    if kind in ("gelu",):
        return F.gelu(x)
    if kind in ("gelu_tanh", "geglu"):
        return F.gelu(x, approximate="tanh")
    if kind == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if kind == "relu":
        return F.relu(x)
    if kind == "relu2":
        return F.relu(x).square()
    if kind == "swiglu":
        return F.silu(x)
    raise ValueError(f"unknown activation {kind!r}")


def gated_act(cfg: Config, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """act(gate) * up; GPT-OSS's clamped variant is gate*sigmoid(alpha*gate) * (up + 1) after clamping."""
    if cfg.mlp == "swiglu_clamped":
        gate = gate.clamp(max=cfg.swiglu_limit)
        up = up.clamp(-cfg.swiglu_limit, cfg.swiglu_limit)
        return gate * torch.sigmoid(cfg.swiglu_alpha * gate) * (up + 1)
    return activation(cfg.mlp, gate) * up


class MLP(nn.Module):
    """Dense feed-forward: up -> act -> down, or gated: act(gate) * up -> down."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias) if cfg.gated else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.hook_pre = HookPoint()  # [B, T, d_ff] pre-activation (the gate's, for gated MLPs)
        self.hook_pre_linear = HookPoint()  # [B, T, d_ff] the linear (up) branch of gated MLPs
        self.hook_post = HookPoint()  # [B, T, d_ff] what enters the down projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            h = activation(self.cfg.mlp, self.hook_pre(self.up(x)))
        else:
            gate, up = self.gate(x), self.up(x)
            h = gated_act(self.cfg, self.hook_pre(gate), self.hook_pre_linear(up))
        return self.down(self.hook_post(h))


class MoE(nn.Module):
    """Mixture of experts: a router picks top-k experts per token (softmax over the k logits).

    Expert weights are stacked: gate/up [E, d_ff, d_model], down [E, d_model, d_ff]. Hooks see
    dense tensors over each token's k chosen experts: hook_pre/hook_post [B, T, k, d_ff].
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        E, f, d = cfg.n_experts, cfg.d_ff, cfg.d_model
        self.router = nn.Linear(d, E, bias=cfg.router_bias)
        self.gate = nn.Parameter(torch.empty(E, f, d)) if cfg.gated else None
        self.up = nn.Parameter(torch.empty(E, f, d))
        self.down = nn.Parameter(torch.empty(E, d, f))
        self.gate_bias = nn.Parameter(torch.zeros(E, f)) if cfg.gated and cfg.mlp_bias else None
        self.up_bias = nn.Parameter(torch.zeros(E, f)) if cfg.mlp_bias else None
        self.down_bias = nn.Parameter(torch.zeros(E, d)) if cfg.mlp_bias else None
        self.hook_router_logits = HookPoint()  # [B, T, E]
        self.hook_expert_weights = HookPoint()  # [B, T, k]
        self.hook_expert_indices = HookPoint()  # [B, T, k]
        self.hook_pre, self.hook_pre_linear, self.hook_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        k = self.cfg.top_k
        logits = self.hook_router_logits(self.router(x))
        top, idx = logits.topk(k, dim=-1)
        weights = self.hook_expert_weights(torch.softmax(top.float(), dim=-1).to(x.dtype))
        idx = self.hook_expert_indices(idx)
        # Sort the N*k (token, slot) assignments by expert so each expert sees one contiguous slice.
        flat_idx = idx.reshape(-1)
        order = flat_idx.argsort(stable=True)
        counts = torch.bincount(flat_idx, minlength=self.cfg.n_experts).tolist()
        xs = x.reshape(-1, d)[order // k]
        gated = self.gate is not None
        pre = self._per_expert(
            xs, counts, self.gate if gated else self.up, self.gate_bias if gated else self.up_bias
        )
        lin = self._per_expert(xs, counts, self.up, self.up_bias) if gated else None
        unsort = torch.empty_like(order)
        unsort[order] = torch.arange(order.numel(), device=order.device)
        pre = self._hooked(self.hook_pre, pre, order, unsort, B, T)
        if lin is not None:
            lin = self._hooked(self.hook_pre_linear, lin, order, unsort, B, T)
            post = gated_act(self.cfg, pre, lin)
        else:
            post = activation(self.cfg.mlp, pre)
        post = self._hooked(self.hook_post, post, order, unsort, B, T)
        out = self._per_expert(post, counts, self.down, self.down_bias)[unsort]  # [N*k, d]
        return (out.view(B, T, k, d) * weights.unsqueeze(-1)).sum(2)

    @staticmethod
    def _per_expert(
        xs: torch.Tensor, counts: list[int], w: torch.Tensor, b: torch.Tensor | None
    ) -> torch.Tensor:
        outs = []
        for e, chunk in enumerate(xs.split(counts)):
            if chunk.shape[0]:
                outs.append(F.linear(chunk, w[e], None if b is None else b[e]))
        return torch.cat(outs) if outs else xs.new_zeros(0, w.shape[1])

    @staticmethod
    def _hooked(
        hook: HookPoint, h: torch.Tensor, order: torch.Tensor, unsort: torch.Tensor, B: int, T: int
    ):
        """Show the hook [B, T, k, f] in token order; hand back expert order."""
        if not hook.active:
            return h
        return hook(h[unsort].view(B, T, -1, h.shape[-1])).reshape(-1, h.shape[-1])[order]


# ---------------------------------------------------------------------------- block and model


class Block(nn.Module):
    """One transformer layer: pre-norm (GPT/Llama), sandwich-norm (Gemma) or post-norm (BERT)."""

    def __init__(self, cfg: Config, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        pre = cfg.pre_norm  # False: sublayers read the raw residual (norms only after them)
        self.ln1 = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_bias) if pre else None
        self.attn = Attention(cfg, layer)
        self.ln2 = (
            None
            if cfg.attn_only or not pre
            else Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_bias)
        )
        self.mlp = None if cfg.attn_only else MoE(cfg) if cfg.n_experts else MLP(cfg)
        if cfg.sandwich_norm:
            self.ln1_post = Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_bias)
            self.ln2_post = (
                None if cfg.attn_only else Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_bias)
            )
        self.drop = nn.Dropout(cfg.dropout)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = (
            HookPoint(),
            HookPoint(),
            HookPoint(),
        )
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple | None,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        s = self.cfg.residual_scale
        x = self.hook_resid_pre(x)
        if self.cfg.post_norm:  # BERT
            a = self.attn(x, rope, mask, cache=cache)
            x = self.hook_resid_mid(self.ln1(x + self.hook_attn_out(self.drop(a))))
            if self.mlp is None:
                return self.hook_resid_post(x)
            return self.hook_resid_post(self.ln2(x + self.hook_mlp_out(self.drop(self.mlp(x)))))
        a = self.attn(x if self.ln1 is None else self.ln1(x), rope, mask, cache=cache)
        if self.cfg.sandwich_norm:
            a = self.ln1_post(a)
        a = self.hook_attn_out(self.drop(a))
        x = self.hook_resid_mid(x + a if s == 1 else x + s * a)
        if self.mlp is None:  # attention-only
            return self.hook_resid_post(x)
        m = self.mlp(x if self.ln2 is None else self.ln2(x))
        if self.cfg.sandwich_norm:
            m = self.ln2_post(m)
        m = self.hook_mlp_out(self.drop(m))
        return self.hook_resid_post(x + m if s == 1 else x + s * m)


class Transformer(HookedMixin, nn.Module):
    """Decoder or encoder transformer built from a `Config`; hook points carry TransformerLens names."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = (
            nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        )
        self.token_type_embed = (
            nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        )
        self.embed_norm = (
            Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_bias) if cfg.embed_norm else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = (
            None if cfg.post_norm else Norm(cfg.d_model, cfg.norm, cfg.norm_eps, cfg.norm_bias)
        )
        self.unembed = (
            nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias) if cfg.lm_head else None
        )
        if self.unembed is not None and cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None
        if cfg.positions == "rope":
            for base in sorted({cfg.rope_base(i) for i in range(cfg.n_layers)}):
                inv, scale = rope_inv_freq(cfg, base)
                self.register_buffer(_rope_key(base), inv, persistent=False)
                self.rope_scale = scale
        self.hook_embed, self.hook_pos_embed, self.hook_token_type_embed = (
            HookPoint(),
            HookPoint(),
            HookPoint(),
        )
        self.apply(self._init_weights)
        self.setup_hooks()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def _init_weights(self, m: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers)."""
        std = self.cfg.init_std
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        if isinstance(m, MoE):
            for w in (m.gate, m.up):
                if w is not None:
                    nn.init.normal_(w, 0.0, std)
            nn.init.normal_(m.down, 0.0, std / math.sqrt(2 * self.cfg.n_layers))
        if isinstance(m, (Attention, MLP)):
            proj = m.o if isinstance(m, Attention) else m.down
            nn.init.normal_(proj.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers))

    def _apply(self, fn, recurse=True):
        """Like `nn.Module._apply`, but RoPE frequency buffers stay float32 under `.to(dtype)`."""
        keep = {
            k: v
            for k, v in self._buffers.items()
            if k.startswith("rope_inv_freq_") and v is not None
        }
        out = super()._apply(fn, recurse)
        for k, v in keep.items():
            self._buffers[k] = v.to(fn(v).device)  # follow the device move, keep float32 values
        return out

    def reset_rope(self) -> None:
        """Recompute the RoPE frequency buffers (e.g. after materializing a model built on `meta`)."""
        for base in sorted({self.cfg.rope_base(i) for i in range(self.cfg.n_layers)}):
            inv, _ = rope_inv_freq(self.cfg, base)
            getattr(self, _rope_key(base)).copy_(inv)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        tokens: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        return_hidden: bool = False,
        cache: KVCache | None = None,
        start_at_layer: int | None = None,
        targets: torch.Tensor | None = None,
        loss_reduction: str = "mean",
    ) -> torch.Tensor:
        """tokens: [B, T] ids -> logits [B, T, vocab] (hidden states [B, T, d] for encoders,
        with `return_hidden`, or when stopping early at `stop_at_layer`).

        attention_mask: [B, T] with 1 for real tokens and 0 for padding (left or right). Positions
        default to counting real tokens only, so left-padded rows get the positions they would alone.
        cache: a `KVCache`; the tokens are appended to it and attend to everything cached before.
        start_at_layer: `tokens` is instead the residual stream [B, T, d_model] entering that block
        (e.g. cached activations); the embedding and earlier blocks are skipped.
        targets: [B, T] class ids (-100 = no loss) -> the cross-entropy ("mean" or "sum" over
        counted tokens, `loss_reduction`) instead of logits, computed without materializing them
        (`linear_cross_entropy`) unless hooks sit on the LM head or logits are softcapped.
        """
        cfg = self.cfg
        if start_at_layer is not None:
            if cache is not None:
                raise ValueError("start_at_layer cannot be used with a cache")
            if tokens.dim() != 3 or tokens.shape[-1] != cfg.d_model:
                raise ValueError(
                    f"with start_at_layer, pass the residual stream [B, T, {cfg.d_model}] entering "
                    f"block {start_at_layer}, not a tensor of shape {tuple(tokens.shape)}"
                )
        elif tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        B, T = tokens.shape[:2]
        if cache is not None and attention_mask is not None and attention_mask.shape != (B, T):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, T)} "
                "(the new tokens only; the cache remembers earlier padding)"
            )
        if cache is not None and stop_at_layer is not None:
            raise ValueError(
                "stop_at_layer cannot be used with a cache (later layers would miss the tokens)"
            )
        if cache is not None:
            pos = cache.begin(tokens, attention_mask)
            position_ids = pos if position_ids is None else position_ids
        # learned positions must fit the table (a static cache was checked when it was built)
        if cfg.positions == "learned" and not (cache is not None and cache.static):
            total = T + (cache.length if cache is not None else 0)
            if total > cfg.max_seq_len:
                raise ValueError(
                    f"sequence length {total} exceeds max_seq_len={cfg.max_seq_len} of this model; "
                    "truncate the input or use a model with a longer context"
                )
        if attention_mask is not None and cache is None:
            if attention_mask.shape != (B, T):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, T)} "
                    "like tokens"
                )
            attention_mask = attention_mask.bool()
            if bool(attention_mask.all()):
                attention_mask = None
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(T, device=tokens.device).unsqueeze(0)
            else:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        from_residual = start_at_layer is not None
        x = tokens if from_residual else self._embed(tokens, position_ids, token_type_ids)
        ropes = self._ropes(position_ids, x.dtype)
        windows = {blk.attn.window for blk in self.blocks}
        if cache is not None:
            masks = {w: cache.mask(T, w, cfg.causal) for w in windows}
        else:
            masks = {w: self._mask(T, w, attention_mask, tokens.device) for w in windows}
        for i, block in enumerate(self.blocks):
            if stop_at_layer is not None and i >= stop_at_layer:
                return x
            if from_residual and i < start_at_layer:
                continue
            layer_cache = cache.layer(i) if cache is not None else None
            x = block(x, ropes.get(cfg.rope_base(i)), masks[block.attn.window], cache=layer_cache)
        if cache is not None:
            cache.commit(T)
        if self.ln_final is not None:
            x = self.ln_final(x)
        if targets is not None:
            return self._loss(x, targets, loss_reduction)
        if return_hidden or self.unembed is None:
            return x
        return self.to_logits(x)

    def to_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final hidden states [..., d] (after `ln_final`) -> logits: LM head, then final softcap."""
        logits = self.unembed(x)
        cap = self.cfg.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def _loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        head = self.unembed
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction={reduction!r}: use 'mean' or 'sum'")
        if head is None:
            raise ValueError(f"{self.cfg.name} has no LM head (an encoder?): targets need one")
        if targets.shape != x.shape[:-1]:
            raise ValueError(
                f"targets have shape {tuple(targets.shape)}, expected {tuple(x.shape[:-1])} "
                "(one next-token id per input token, -100 where no loss counts)"
            )
        hooked = head._forward_hooks or head._forward_pre_hooks or type(head) is not nn.Linear
        if self.cfg.final_softcap is None and not hooked:
            return linear_cross_entropy(x, head.weight, targets, head.bias, reduction=reduction)
        return F.cross_entropy(
            self.to_logits(x).float().flatten(0, 1),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction=reduction,
        )

    def _embed(
        self,
        tokens: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token (+ position, + token type) embeddings: the residual stream entering block 0."""
        cfg = self.cfg
        x = self.embed(tokens)
        if cfg.embed_scale:
            x = x * torch.tensor(cfg.d_model**0.5, dtype=x.dtype)
        x = self.hook_embed(x)
        if self.pos_embed is not None:
            x = x + self.hook_pos_embed(self.pos_embed(position_ids))
        if self.token_type_embed is not None:
            tt = token_type_ids if token_type_ids is not None else torch.zeros_like(tokens)
            x = x + self.hook_token_type_embed(self.token_type_embed(tt))
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT pooler: tanh(dense(first token's hidden state))."""
        if self.pooler is None:
            raise ValueError(f"{self.cfg.name} has no pooler; build it with Config(pooler=True)")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def _ropes(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin [B, 1, T, head_dim] for each RoPE base in use, in `apply_rope`'s layout."""
        if self.cfg.positions != "rope":
            return {}
        out = {}
        for base in {self.cfg.rope_base(i) for i in range(self.cfg.n_layers)}:
            freqs = position_ids[:, None, :, None].float() * getattr(self, _rope_key(base))
            cos, sin = (
                (freqs.cos() * self.rope_scale).to(dtype),
                (freqs.sin() * self.rope_scale).to(dtype),
            )
            out[base] = (torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1))
        return out

    def _mask(
        self, T: int, window: int | None, pad: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """bool [B|1, 1, T, T] (True = may attend), or None when plain causal attention suffices."""
        causal = self.cfg.causal
        if pad is None and window is None:
            return None  # SDPA's is_causal (or no mask at all for encoders)
        i = torch.arange(T, device=device)
        rel = i[:, None] - i[None, :]  # query - key
        allowed = rel >= 0 if causal else torch.ones(T, T, dtype=torch.bool, device=device)
        if window is not None:
            allowed = allowed & (rel < window) if causal else allowed & (rel.abs() < window)
        allowed = allowed[None, None]
        if pad is not None:
            # Padding keys are hidden; a query always sees itself so no row is empty.
            allowed = allowed & (
                pad[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=device)
            )
        return allowed

    # ------------------------------------------------------------------ facts
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); optionally without token/position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel() + (
                self.pos_embed.weight.numel() if self.pos_embed is not None else 0
            )
        return n


def _rope_key(base: float) -> str:
    return f"rope_inv_freq_{int(base)}"
