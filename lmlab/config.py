"""`Config`: every architectural knob of the one `Transformer`, and the registry of named presets.

Families are presets, not classes: GPT-2, Llama, SmolLM2, Mistral, Gemma 3, GPT-OSS and a
BERT encoder differ only in the values below.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable
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


class ConfigError(LmlabError, ValueError):
    """A config value is invalid; the message names the field, the value and the fix."""


@dataclass
class Config:
    """Architecture of a `Transformer`. Unset derived fields are filled in by `__post_init__`."""

    name: str = "custom"
    family: str = (
        "gpt2"  # which weight-name map applies: gpt2, llama, mistral, gemma3, gpt-oss, bert
    )
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
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys
    embed_norm: bool = False  # BERT: LayerNorm after the embedding sum
    # positions
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None  # Gemma 3: a different base on sliding-window layers
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

    # ------------------------------------------------------------------ derived facts
    @property
    def pad_id(self) -> int:
        """The id written into pad slots: `pad_token_id` if it is in the vocabulary, else 0."""
        pad = self.pad_token_id
        return pad if pad is not None and 0 <= pad < self.vocab_size else 0

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


# ---------------------------------------------------------------------- presets

PRESETS: dict[str, Callable[[], Config]] = {}
PUBLISHED_PARAMS: dict[str, float] = {}  # preset -> published parameter count (for tests and docs)


def register(name: str, published: float | None = None) -> Callable:
    """Decorator adding a preset factory to the registry."""

    def deco(fn: Callable[[], Config]) -> Callable[[], Config]:
        PRESETS[name] = fn
        if published is not None:
            PUBLISHED_PARAMS[name] = published
        return fn

    return deco


def preset(name: str, **overrides: Any) -> Config:
    """The named preset, optionally with some fields overridden; unknown names suggest near ones."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"unknown preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}"
        )
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


def every_nth_full(n_layers: int, n: int) -> tuple[str, ...]:
    """Layer types where every n-th layer is full attention and the rest slide (Gemma 3: 6, GPT-OSS: 2)."""
    return tuple("full" if (i + 1) % n == 0 else "sliding" for i in range(n_layers))


# GPT-2 ---------------------------------------------------------------
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


register("gpt2", 124e6)(lambda: _gpt2("gpt2", 768, 12, 12))
register("gpt2-medium", 355e6)(lambda: _gpt2("gpt2-medium", 1024, 24, 16))
register("gpt2-large", 774e6)(lambda: _gpt2("gpt2-large", 1280, 36, 20))
# GPT-2 XL is announced as "1.5B"; its published checkpoint holds 1,557,611,200 parameters.
register("gpt2-xl", 1.558e9)(lambda: _gpt2("gpt2-xl", 1600, 48, 25))
register("gpt2-tiny")(
    lambda: _gpt2("gpt2-tiny", 256, 2, 4).replace(vocab_size=512, max_seq_len=256)
)


# Llama / SmolLM2 / Mistral ----------------------------------------------
def _llama(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="llama",
        norm="rmsnorm",
        norm_eps=1e-5,
        norm_bias=False,
        positions="rope",
        mlp="swiglu",
        mlp_bias=False,
        tie_embeddings=False,
    )
    return Config(**{**base, **kw})


register("smollm2-135m", 135e6)(
    lambda: _llama(
        "smollm2-135m",
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        max_seq_len=8192,
        rope_theta=100000.0,
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
)
register("smollm2-360m", 362e6)(
    lambda: _llama(
        "smollm2-360m",
        vocab_size=49152,
        d_model=960,
        n_layers=32,
        n_heads=15,
        n_kv_heads=5,
        d_ff=2560,
        max_seq_len=8192,
        rope_theta=100000.0,
        tie_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
)
register("llama-2-7b", 6.74e9)(
    lambda: _llama(
        "llama-2-7b",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        d_ff=11008,
        max_seq_len=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
)
register("llama-3.2-1b", 1.24e9)(
    lambda: _llama(
        "llama-3.2-1b",
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_ff=8192,
        max_seq_len=131072,
        rope_theta=500000.0,
        rope_scaling="llama3",
        rope_factor=32.0,
        rope_original_max_seq_len=8192,
        tie_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
    )
)
register("mistral-7b", 7.24e9)(
    lambda: _llama(
        "mistral-7b",
        family="mistral",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=32768,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
)
register("llama-tiny")(
    lambda: _llama(
        "llama-tiny",
        vocab_size=512,
        d_model=256,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=688,
        max_seq_len=256,
    )
)
register("mistral-tiny")(
    lambda: _llama(
        "mistral-tiny",
        family="mistral",
        vocab_size=512,
        d_model=256,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=688,
        max_seq_len=256,
        sliding_window=16,
    )
)


# Gemma 3 ---------------------------------------------------------------
def _gemma3(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="gemma3",
        norm="rmsnorm_gemma",
        norm_eps=1e-6,
        norm_bias=False,
        sandwich_norm=True,
        qk_norm=True,
        positions="rope",
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        mlp="geglu",
        mlp_bias=False,
        tie_embeddings=True,
        embed_scale=True,
        sliding_window_pattern=6,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    return Config(**{**base, **kw})


register("gemma3-270m", 268e6)(
    lambda: _gemma3(
        "gemma3-270m",
        vocab_size=262144,
        d_model=640,
        n_layers=18,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        d_ff=2048,
        max_seq_len=32768,
        sliding_window=512,
        attn_scale=256**-0.5,
    )
)
register("gemma3-1b", 1.0e9)(
    lambda: _gemma3(
        "gemma3-1b",
        vocab_size=262144,
        d_model=1152,
        n_layers=26,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        d_ff=6912,
        max_seq_len=32768,
        sliding_window=512,
        attn_scale=256**-0.5,
    )
)
register("gemma3-tiny")(
    lambda: _gemma3(
        "gemma3-tiny",
        vocab_size=512,
        d_model=192,
        n_layers=6,
        n_heads=4,
        n_kv_heads=1,
        head_dim=32,
        d_ff=512,
        max_seq_len=256,
        sliding_window=16,
        attn_scale=32**-0.5,
    )
)


# GPT-OSS ---------------------------------------------------------------
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


register("gpt-oss-20b", 20.9e9)(
    lambda: _gpt_oss("gpt-oss-20b", d_model=2880, n_layers=24, d_ff=2880, n_experts=32, top_k=4)
)
register("gpt-oss-120b", 116.8e9)(
    lambda: _gpt_oss("gpt-oss-120b", d_model=2880, n_layers=36, d_ff=2880, n_experts=128, top_k=4)
)
# Same recipe at one-GPU scale (our design, 588.4M total / 352M active): GPT-OSS's o200k-harmony
# vocabulary, 16 alternating sliding/full layers of width 640, GQA 10/2 heads of 64 with sinks,
# 16 clamped-SwiGLU experts (top-4) of width 640, YaRN-free RoPE at a 4k context.
register("gpt-oss-588m", 588e6)(
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
register("gpt-oss-tiny")(
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


# BERT ------------------------------------------------------------------
def _bert(name: str, **kw: Any) -> Config:
    base = dict(
        name=name,
        family="bert",
        vocab_size=30522,
        norm="layernorm",
        norm_eps=1e-12,
        post_norm=True,
        embed_norm=True,
        positions="learned",
        max_seq_len=512,
        causal=False,
        mlp="gelu",
        attn_qkv_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        type_vocab_size=2,
        pooler=True,
        lm_head=False,
        tie_embeddings=False,
        pad_token_id=0,
    )
    return Config(**{**base, **kw})


register("minilm-l6", 22.7e6)(
    lambda: _bert("minilm-l6", d_model=384, n_layers=6, n_heads=12, d_ff=1536)
)
register("bert-base", 110e6)(
    lambda: _bert("bert-base", d_model=768, n_layers=12, n_heads=12, d_ff=3072)
)
register("bert-tiny")(
    lambda: _bert(
        "bert-tiny", vocab_size=512, d_model=256, n_layers=2, n_heads=4, d_ff=1024, max_seq_len=256
    )
)
