"""`Config`: every architectural knob of the one `Transformer`, and their validation.

Families are presets, not classes: the named presets and each family's translation to and from
the Hugging Face and GGUF layouts live in `lmlab.families` (`lmlab.families.preset(name)`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError, MissingFileError

NORMS = ("layernorm", "rmsnorm", "rmsnorm_gemma")
POSITIONS = ("learned", "rope", "none")
ROPE_SCALINGS = (None, "linear", "llama3", "yarn")
MLPS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "relu2", "swiglu", "geglu", "swiglu_clamped")
GATED_MLPS = ("swiglu", "geglu", "swiglu_clamped")
LAYER_TYPES = ("full", "sliding")
QK_NORM_SCOPES = ("head", "all")


class ConfigError(LmlabError, ValueError):
    """A config value is invalid; the message names the field, the value and the fix."""


@dataclass
class Config:
    """Architecture of a `Transformer`. Unset derived fields are filled in by `__post_init__`."""

    name: str = "custom"
    # the lmlab.families registry name, which picks the weight-name maps; "" = infer from the knobs
    family: str = ""
    vocab_size: int = 50257
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: MQA; in between: GQA
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: 4 * d_model
    max_seq_len: int = 1024
    # normalization
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True  # LayerNorm has a bias
    post_norm: bool = False  # BERT: x = norm(x + f(x)) instead of x = x + f(norm(x))
    sandwich_norm: bool = False  # Gemma: also normalize each branch output before adding it
    pre_norm: bool = True  # False (OLMo 2, with sandwich_norm): sublayers read the raw residual
    qk_norm: bool = False  # RMSNorm on queries and keys (before RoPE)
    qk_norm_scope: str = (
        "head"  # "head": over head_dim, shared by heads; "all": the whole projection
    )
    embed_norm: bool = False  # BERT: LayerNorm after the embedding sum
    # positions
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None  # Gemma 3: a different base on sliding-window layers
    rope_fraction: float = 1.0  # share of each head's leading dims that rotate (partial rotary)
    rope_scaling: str | None = None
    rope_factor: float = 1.0
    rope_original_max_seq_len: int | None = None  # llama3 / yarn: pretraining context
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_truncate: bool = True
    yarn_attention_factor: float | None = None  # None: 0.1 * ln(factor) + 1
    # attention
    causal: bool = True
    attn_qkv_bias: bool = False
    attn_out_bias: bool = False
    attn_scale: float | None = None  # None: head_dim ** -0.5
    attn_softcap: float | None = None
    attn_sinks: bool = False  # GPT-OSS: one learned logit per head that absorbs attention
    sliding_window: int | None = (
        None  # keys within the last `sliding_window` positions (self included)
    )
    sliding_window_pattern: int = 0  # n > 0: every n-th layer is full attention, the rest slide
    layer_types: tuple[str, ...] | None = (
        None  # per layer "full"/"sliding"; None: from the pattern above
    )
    # feed-forward
    mlp: str = "gelu_tanh"
    mlp_bias: bool = True
    swiglu_limit: float = 7.0  # swiglu_clamped (GPT-OSS)
    swiglu_alpha: float = 1.702
    n_experts: int = 0  # > 0: mixture of experts
    top_k: int = 0
    router_bias: bool = False
    attn_only: bool = (
        False  # no MLP and no second norm: attention-only circuits (toy interp models)
    )
    # embeddings and output
    tie_embeddings: bool = True
    embed_scale: bool = False  # Gemma: multiply token embeddings by sqrt(d_model)
    type_vocab_size: int = 0  # BERT token-type embeddings
    pooler: bool = False  # BERT pooler (dense + tanh on the first token)
    lm_head: bool = True  # False for encoders used for embeddings
    lm_head_bias: bool = False
    final_softcap: float | None = None
    # training-time knobs
    residual_scale: float = (
        1.0  # multiplies every branch output before it joins the residual stream
    )
    dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # free-form notes (e.g. the source checkpoint)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None and self.n_heads > 0:
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.layer_types is None:
            if self.sliding_window and self.sliding_window_pattern > 0:
                self.layer_types = every_nth_full(self.n_layers, self.sliding_window_pattern)
            else:
                self.layer_types = ("sliding" if self.sliding_window else "full",) * self.n_layers
        else:
            self.layer_types = tuple(self.layer_types)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `ConfigError` naming the field, its value and the fix for the first bad value."""
        positive = (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
            "max_seq_len",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                _fail(name, value, "must be a positive integer")
        _choice("norm", self.norm, NORMS)
        _choice("positions", self.positions, POSITIONS)
        _choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        _choice("mlp", self.mlp, MLPS)
        _choice("qk_norm_scope", self.qk_norm_scope, QK_NORM_SCOPES)
        if (
            self.n_heads * self.head_dim != self.d_model
            and self.head_dim == self.d_model // self.n_heads
        ):
            _fail(
                "n_heads",
                self.n_heads,
                f"must divide d_model={self.d_model} (or set head_dim explicitly)",
            )
        if self.n_heads % self.n_kv_heads:
            _fail(
                "n_kv_heads",
                self.n_kv_heads,
                f"must divide n_heads={self.n_heads} (1 = MQA, n_heads = MHA)",
            )
        if self.positions == "rope" and self.head_dim % 2:
            _fail("head_dim", self.head_dim, "must be even for rotary positions")
        if not 0.0 < self.rope_fraction <= 1.0 or (
            self.positions == "rope" and (self.rope_dim % 2 or not self.rope_dim)
        ):
            _fail(
                "rope_fraction",
                self.rope_fraction,
                f"must be in (0, 1] and give an even number of rotated dims of head_dim={self.head_dim}",
            )
        if self.n_experts < 0:
            _fail("n_experts", self.n_experts, "must be >= 0 (0 = a dense MLP)")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            _fail("top_k", self.top_k, f"must be in [1, n_experts={self.n_experts}]")
        if not self.n_experts and self.top_k:
            _fail("top_k", self.top_k, "needs n_experts > 0; set n_experts or top_k = 0")
        if len(self.layer_types) != self.n_layers:
            _fail(
                "layer_types",
                self.layer_types,
                f"needs one entry per layer (n_layers={self.n_layers})",
            )
        for kind in self.layer_types:
            _choice("layer_types", kind, LAYER_TYPES)
        if "sliding" in self.layer_types and not self.sliding_window:
            _fail(
                "sliding_window",
                self.sliding_window,
                "must be a positive integer when a layer is 'sliding'",
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            _fail("sliding_window", self.sliding_window, "must be a positive integer or None")
        if self.sliding_window_pattern < 0:
            _fail(
                "sliding_window_pattern",
                self.sliding_window_pattern,
                "must be >= 0 (0 = no pattern)",
            )
        if self.rope_scaling in ("llama3", "yarn") and not self.rope_original_max_seq_len:
            _fail(
                "rope_original_max_seq_len",
                None,
                f"is required with rope_scaling={self.rope_scaling!r}",
            )
        if self.rope_scaling and self.rope_factor <= 0:
            _fail("rope_factor", self.rope_factor, "must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            _fail("dropout", self.dropout, "must be in [0, 1)")
        if self.type_vocab_size < 0:
            _fail("type_vocab_size", self.type_vocab_size, "must be >= 0")
        if self.post_norm and self.sandwich_norm:
            _fail("sandwich_norm", True, "cannot be combined with post_norm=True")
        if not self.pre_norm and (self.post_norm or not self.sandwich_norm):
            _fail(
                "pre_norm",
                False,
                "needs sandwich_norm=True and post_norm=False (a norm on each branch output)",
            )

    # ------------------------------------------------------------------ derived facts
    @property
    def pad_id(self) -> int:
        """The id written into pad slots: `pad_token_id` if it is in the vocabulary, else 0."""
        pad = self.pad_token_id
        return pad if pad is not None and 0 <= pad < self.vocab_size else 0

    @property
    def rope_dim(self) -> int:
        """How many leading dims of each head RoPE rotates (all of head_dim unless partial)."""
        return int(self.head_dim * self.rope_fraction)

    @property
    def gated(self) -> bool:
        """Whether the MLP has a gate projection (SwiGLU, GeGLU, clamped SwiGLU)."""
        return self.mlp in GATED_MLPS

    def window(self, layer: int) -> int | None:
        """The sliding window of `layer`, or None for a full-attention layer."""
        return self.sliding_window if self.layer_types[layer] == "sliding" else None

    def rope_base(self, layer: int) -> float:
        """The RoPE base of `layer` (Gemma 3 uses a smaller one on sliding-window layers)."""
        if self.rope_local_theta is not None and self.layer_types[layer] == "sliding":
            return self.rope_local_theta
        return self.rope_theta

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated, unknown keys rejected).

        Changing `n_layers` or the window settings re-derives `layer_types` unless it is given too.
        """
        d = self.to_dict()
        if "layer_types" not in changes and {
            "n_layers",
            "sliding_window",
            "sliding_window_pattern",
        } & set(changes):
            d["layer_types"] = None
        return Config.from_dict({**d, **changes})

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a dict, rejecting unknown keys with the nearest valid name."""
        check_keys(d, cls)
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write `config.json`-style JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a file written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"model config {path} not found — pass a file Config.save wrote")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{path} is not a JSON config ({e}) — write it with Config.save"
            ) from None
        if not isinstance(d, dict):
            raise ConfigError(
                f"{path} holds {type(d).__name__}, not a JSON object of Config fields"
            )
        return cls.from_dict(d)


def check_keys(d: dict[str, Any], cls: type) -> None:
    """Reject keys that are not fields of dataclass `cls`, suggesting the closest valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=3)
            hint = f"did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
            raise ConfigError(f"unknown config key {key!r}; {hint}valid keys: {', '.join(valid)}")


def _fail(name: str, value: Any, fix: str) -> None:
    raise ConfigError(f"Config.{name}={value!r} {fix}")


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        _fail(name, value, f"is not one of {list(options)}")


def every_nth_full(n_layers: int, n: int) -> tuple[str, ...]:
    """Layer types where every n-th layer is full attention and the rest slide (Gemma 3: 6, GPT-OSS: 2)."""
    return tuple("full" if (i + 1) % n == 0 else "sliding" for i in range(n_layers))
