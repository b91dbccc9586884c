"""Tokenizers behind one interface: tiktoken GPT-2, tokenizer.json, GGUF vocabularies, chars, BPE from scratch."""

from lmlab.tokenizers.base import Tokenizer, TokenizerError
from lmlab.tokenizers.bpe import GPT2_PATTERN, GPT4_PATTERN, BPETokenizer
from lmlab.tokenizers.char import CharTokenizer
from lmlab.tokenizers.chat_template import render_chat_template
from lmlab.tokenizers.gguf_meta import gguf_metadata
from lmlab.tokenizers.gguf_vocab import from_gguf_metadata, gguf_tokenizer
from lmlab.tokenizers.hf import HFTokenizer
from lmlab.tokenizers.load import check_vocab, load_tokenizer
from lmlab.tokenizers.o200k import HarmonyTokenizer, o200k_harmony
from lmlab.tokenizers.tiktoken_gpt2 import TiktokenTokenizer, gpt2_tiktoken

__all__ = [
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "HarmonyTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "TokenizerError",
    "check_vocab",
    "from_gguf_metadata",
    "gguf_metadata",
    "gguf_tokenizer",
    "gpt2_tiktoken",
    "load_tokenizer",
    "o200k_harmony",
    "render_chat_template",
]
