"""`load_tokenizer`: one entry point for every tokenizer source, and `check_vocab` against a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmlab.tokenizers.base import MANIFEST, Tokenizer, TokenizerError

KINDS = ("bpe", "char", "hf", "tiktoken", "o200k_harmony")


def _from_folder(folder: Path) -> Tokenizer:
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            kind = json.loads(manifest.read_text(encoding="utf-8"))["kind"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TokenizerError(
                f"{manifest} is corrupt (no 'kind'); save the tokenizer again"
            ) from None
        if kind == "bpe":
            from lmlab.tokenizers.bpe import BPETokenizer

            return BPETokenizer.load(folder)
        if kind == "char":
            from lmlab.tokenizers.char import CharTokenizer

            return CharTokenizer.load(folder)
        if kind == "tiktoken":
            from lmlab.tokenizers.tiktoken_gpt2 import FILE, TiktokenTokenizer

            return TiktokenTokenizer(folder / FILE)
        if kind == "o200k_harmony":
            from lmlab.tokenizers.o200k import RANKS_FILE, HarmonyTokenizer

            return HarmonyTokenizer(folder / RANKS_FILE)
        if kind != "hf":
            raise TokenizerError(f"{manifest} names tokenizer kind {kind!r}; known kinds: {KINDS}")
    if (folder / "tokenizer.json").is_file():
        from lmlab.tokenizers.hf import HFTokenizer

        return HFTokenizer.from_folder(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return _from_file(ggufs[0])
    raise TokenizerError(
        f"no tokenizer in folder {folder}: expected tokenizer.json (Hugging Face), {MANIFEST} (saved by lmlab) "
        f"or one .gguf file; found {sorted(p.name for p in folder.iterdir())[:10]}"
    )


def _from_file(path: Path) -> Tokenizer:
    if path.suffix == ".gguf":
        from lmlab.tokenizers.gguf_vocab import gguf_tokenizer

        return gguf_tokenizer(path)
    if path.name == "o200k_base.tiktoken":
        from lmlab.tokenizers.o200k import HarmonyTokenizer

        return HarmonyTokenizer(path)
    if path.suffix == ".tiktoken":
        from lmlab.tokenizers.tiktoken_gpt2 import TiktokenTokenizer

        return TiktokenTokenizer(path)
    if path.name == "tokenizer.json":
        from lmlab.tokenizers.hf import HFTokenizer

        return HFTokenizer.from_folder(path.parent)
    raise TokenizerError(
        f"cannot read a tokenizer from file {path}: lmlab reads .gguf, .tiktoken and tokenizer.json files, "
        "or a folder saved with tokenizer.save(folder)"
    )


def load_tokenizer(source: str | Path | Tokenizer) -> Tokenizer:
    """A tokenizer from "gpt2", "o200k_harmony", a packaged model name, a folder, a
    `.gguf`/`.tiktoken`/tokenizer.json file."""
    if isinstance(source, Tokenizer):
        return source
    if str(source) == "gpt2":
        from lmlab.tokenizers.tiktoken_gpt2 import gpt2_tiktoken

        return gpt2_tiktoken()
    if str(source) == "o200k_harmony":
        from lmlab.tokenizers.o200k import o200k_harmony

        return o200k_harmony()
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        return _from_file(path)
    from lmlab.packaged import PACKAGED, packaged_path

    if str(source) in PACKAGED:
        p = packaged_path(str(source))
        if p is None:
            raise TokenizerError(
                f"packaged model {source!r} is not installed; run `{PACKAGED[str(source)].install}`"
            )
        return _from_folder(p) if p.is_dir() else _from_file(p)
    raise TokenizerError(
        f"unknown tokenizer {str(source)!r}: not an existing file or folder, and not one of the names "
        f"{['gpt2', 'o200k_harmony', *sorted(PACKAGED)]}; pass a folder with tokenizer.json, a .gguf or .tiktoken file, "
        "or a folder saved with tokenizer.save(folder)"
    )


def check_vocab(tokenizer: Tokenizer, model_or_cfg: Any) -> None:
    """Raise if the tokenizer can emit ids the model has no embedding row for."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    n_model = cfg if isinstance(cfg, int) else getattr(cfg, "vocab_size", None)
    if n_model is None:
        raise TypeError(
            f"check_vocab needs a model, a Config or an int vocab size, got {type(model_or_cfg).__name__}"
        )
    n_tok = tokenizer.vocab_size
    if n_tok > n_model:
        raise TokenizerError(
            f"tokenizer/model vocab mismatch: {type(tokenizer).__name__} has {n_tok} ids but the model "
            f"(vocab_size={n_model}) embeds only ids < {n_model}; use the tokenizer the model was trained "
            f"with, or build the model with vocab_size >= {n_tok}"
        )
