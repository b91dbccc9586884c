"""Real models for interpretability work: `lmlab.load` plus a tokenizer with `encode`/`decode`."""

from __future__ import annotations

import functools
from typing import Any

import torch

from lmlab.model import Transformer


class _HFTokenizer:
    """Adapter giving a transformers tokenizer lmlab's `encode` / `decode` interface."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        return list(self.tok(text, add_special_tokens=add_special)["input_ids"])

    def decode(self, ids: Any, *, skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)


def _fallback_tokenizer(name: str) -> Any:
    """A transformers tokenizer for a packaged model (used while lmlab's own is unavailable)."""
    from transformers import AutoTokenizer

    from lmlab.packaged import packaged_path

    path = packaged_path(name)
    if path is None:
        raise FileNotFoundError(f"packaged model {name!r} is not installed; see lmlab.packaged")
    if path.suffix == ".gguf":
        return _HFTokenizer(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))
    return _HFTokenizer(AutoTokenizer.from_pretrained(str(path)))


@functools.lru_cache(maxsize=2)
def load_model(name: str) -> tuple[Transformer, Any]:
    """(model in eval mode, float32, tokenizer) for a packaged model or preset; cached per process."""
    import lmlab

    model, tok = lmlab.load(name)
    if tok is None:
        tok = _fallback_tokenizer(name)
    return model.float().eval().requires_grad_(False), tok


def encode(tok: Any, text: str, bos: int | None = None) -> torch.Tensor:
    """Token ids [1, T] of `text`, with `bos` prepended when given and not already there."""
    ids = tok.encode(text)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return torch.tensor([ids])


def token_strs(tok: Any, ids: torch.Tensor | list[int]) -> list[str]:
    """Each id decoded on its own (for plot labels and the viewer)."""
    return [tok.decode([int(i)]) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
