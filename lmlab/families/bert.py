"""BERT-style encoders (BERT, MiniLM): bidirectional, post-norm, token types, a pooler, no LM head."""

from __future__ import annotations

from typing import Any

from lmlab.config import Config
from lmlab.families import common
from lmlab.families.base import Family
from lmlab.families.registry import register_family, register_preset

_LAYER = (
    ("attention.self.query", "attn.q"),
    ("attention.self.key", "attn.k"),
    ("attention.self.value", "attn.v"),
    ("attention.output.dense", "attn.o"),
    ("attention.output.LayerNorm", "ln1"),
    ("intermediate.dense", "mlp.up"),
    ("output.dense", "mlp.down"),
    ("output.LayerNorm", "ln2"),
)
_TOP = (
    ("embeddings.word_embeddings", "embed"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.token_type_embeddings", "token_type_embed"),
    ("embeddings.LayerNorm", "embed_norm"),
    ("pooler.dense", "pooler"),
)


class Bert(Family):
    """Encoders in transformers' `bert` layout."""

    name = "bert"
    hf_model_types = ("bert",)
    hf_prefixes = (("bert.", ""),)
    hf_ignored = (r"^cls\.",)  # the masked-LM / next-sentence heads of pretraining checkpoints

    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        return Config(
            name=name,
            family=self.name,
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
            mlp=common.activation(hf.get("hidden_act", "gelu")),
            attn_qkv_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            type_vocab_size=hf.get("type_vocab_size", 2),
            pooler=True,
            lm_head=False,
            tie_embeddings=False,
            **common.special_ids(hf),
        )

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        return {
            "architectures": ["BertModel"],
            "model_type": self.name,
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "max_position_embeddings": cfg.max_seq_len,
            "layer_norm_eps": cfg.norm_eps,
            "hidden_act": {"gelu_tanh": "gelu_new"}.get(cfg.mlp, cfg.mlp),
            "type_vocab_size": cfg.type_vocab_size,
            "tie_word_embeddings": False,
            **common.hf_special_ids(cfg),
        }

    def fits(self, cfg: Config) -> bool:
        return cfg.post_norm and not cfg.causal

    def hf_renames(self, cfg: Config) -> dict[str, str]:
        m = common.module_renames("", "", _TOP)
        m.pop("embeddings.word_embeddings.bias")  # embeddings have no bias
        m.pop("embeddings.position_embeddings.bias")
        m.pop("embeddings.token_type_embeddings.bias")
        for i in range(cfg.n_layers):
            m |= common.module_renames(f"encoder.layer.{i}.", f"blocks.{i}.", _LAYER)
        return m


register_family(Bert())


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


register_preset("minilm-l6", 22.7e6)(
    lambda: _bert("minilm-l6", d_model=384, n_layers=6, n_heads=12, d_ff=1536)
)
register_preset("bert-base", 110e6)(
    lambda: _bert("bert-base", d_model=768, n_layers=12, n_heads=12, d_ff=3072)
)
register_preset("bert-tiny")(
    lambda: _bert(
        "bert-tiny", vocab_size=512, d_model=256, n_layers=2, n_heads=4, d_ff=1024, max_seq_len=256
    )
)
