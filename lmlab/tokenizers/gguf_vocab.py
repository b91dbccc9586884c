"""Rebuild a `tokenizers.Tokenizer` from the vocabulary llama.cpp embeds in GGUF metadata.

Two GGUF tokenizer models are handled:
- "gpt2": byte-level BPE with explicit merges; `tokenizer.ggml.pre` names the pre-tokenizer regex.
- "llama": SentencePiece BPE (Llama 1/2, Gemma); merges are not stored, so they are recovered from
  the piece scores (a pair merges if its concatenation is a piece; higher score merges first).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lmlab.tokenizers.base import TokenizerError
from lmlab.tokenizers.hf import HFTokenizer

# llama.cpp token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

# `tokenizer.ggml.pre` -> pre-tokenizer recipe. "gpt2": GPT-2's regex; "digits+gpt2": every digit
# on its own first (StarCoder/SmolLM); the others: a split regex before a regex-free byte-level step.
PRE_TOKENIZERS: dict[str, str] = {
    **dict.fromkeys(
        [
            "default",
            "gpt2",
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "roberta-bpe",
            "mpt",
            "olmo",
            "jais",
            "poro-chat",
            "viking",
            "gpt-4o",
        ],
        "gpt2",
    ),
    **dict.fromkeys(
        ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"],
        "digits+gpt2",
    ),
    **dict.fromkeys(
        ["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe"], "llama3"
    ),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"], "qwen2"),
}


def _byte_level_pre(kind: str, pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits+gpt2":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    pattern = {"llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}[kind]
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise TokenizerError(
            f"GGUF metadata has no {key!r}; the file carries no tokenizer, load one separately"
        )
    return meta[key]


def _gpt2_model(meta: dict[str, Any], tokens: list[str]) -> tuple[Any, Any, Any, Any]:
    """Byte-level BPE: vocab + stored merges; pre-tokenizer from `tokenizer.ggml.pre`."""
    from tokenizers import decoders, models

    merges = [tuple(m.split(" ", 1)) for m in _need(meta, "tokenizer.ggml.merges")]
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    kind = PRE_TOKENIZERS.get(pre)
    if kind is None:
        warnings.warn(
            f"GGUF pre-tokenizer {pre!r} is not known to lmlab; using GPT-2's regex, so ids may differ from "
            f"llama.cpp's on digits and punctuation (known: {sorted(PRE_TOKENIZERS)})",
            stacklevel=3,
        )
        kind = "gpt2"
    vocab = {t: i for i, t in enumerate(tokens)}
    model = models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False)
    return model, None, _byte_level_pre(kind, pre), decoders.ByteLevel()


def sentencepiece_merges(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece BPE vocabulary: every split of a normal piece into two
    pieces, ordered by the piece's score (highest first), then by the left part's score."""
    score = {t: s for t, s, ty in zip(tokens, scores, types, strict=True) if ty == NORMAL}
    found: list[tuple[float, float, str, str]] = []
    for piece, s in score.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in score and right in score:
                found.append((-s, -score[left], left, right))
    found.sort()
    return [(left, right) for _, _, left, right in found]


def _llama_model(
    meta: dict[str, Any], tokens: list[str], types: list[int]
) -> tuple[Any, Any, Any, Any]:
    """SentencePiece BPE: spaces become `▁`, unknown characters fall back to `<0xNN>` bytes."""
    from tokenizers import decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    byte_fallback = BYTE in types
    vocab = {t: i for i, t in enumerate(tokens)}
    model = models.BPE(
        vocab,
        sentencepiece_merges(tokens, scores, types),
        unk_token=tokens[unk_id] if unk_id is not None else None,
        fuse_unk=True,
        byte_fallback=byte_fallback,
    )
    space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend("▁")] if space_prefix else []
    normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    return model, normalizer, None, decoders.Sequence(dec)


def from_gguf_metadata(meta: dict[str, Any]) -> HFTokenizer:
    """A tokenizer equal to llama.cpp's from GGUF `tokenizer.*` metadata (plain Python values)."""
    from tokenizers import AddedToken, processors
    from tokenizers import Tokenizer as RawTokenizer

    kind = _need(meta, "tokenizer.ggml.model")
    tokens = list(_need(meta, "tokenizer.ggml.tokens"))
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise TokenizerError(
            f"GGUF has {len(tokens)} tokens but {len(types)} token types; the file is corrupt"
        )
    if kind == "gpt2":
        model, normalizer, pre, dec = _gpt2_model(meta, tokens)
    elif kind == "llama":
        model, normalizer, pre, dec = _llama_model(meta, tokens, types)
    else:
        raise TokenizerError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2' byte-level BPE, 'llama' "
            "SentencePiece); load the model's tokenizer.json with load_tokenizer(folder) instead"
        )
    tok = RawTokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre is not None:
        tok.pre_tokenizer = pre
    tok.decoder = dec
    # Control/unknown tokens are special; user-defined ones (e.g. "\n\n", "<start_of_turn>") are
    # matched whole in raw text, like SentencePiece's user symbols.
    added = [
        AddedToken(t, special=ty in (CONTROL, UNKNOWN), normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty in (CONTROL, UNKNOWN, USER_DEFINED)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])

    def special(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise TokenizerError(
                f"GGUF {key}_token_id={i} is outside the {len(tokens)}-token vocabulary"
            )
        return tokens[int(i)]

    bos, eos, pad = special("bos"), special("eos"), special("padding")
    single, pieces = "$A", []
    if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        single, pieces = f"{bos}:0 $A:0", [(bos, tokens.index(bos))]
    if meta.get("tokenizer.ggml.add_eos_token", False) and eos is not None:
        single += f" {eos}:0"
        pieces.append((eos, tokens.index(eos)))
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=list(dict.fromkeys(pieces))
    )
    return HFTokenizer(
        tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        chat_template=meta.get("tokenizer.chat_template"),
    )


def gguf_tokenizer(path: str | Path) -> HFTokenizer:
    """The tokenizer embedded in a `.gguf` file (reads only its metadata)."""
    from lmlab.tokenizers.gguf_meta import gguf_metadata

    return from_gguf_metadata(gguf_metadata(path))
