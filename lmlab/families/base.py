"""`Family`: the interface one model-family module implements (presets aside, which it registers).

A family is everything that differs between, say, Llama and GPT-2 *outside* the model: how a
transformers `config.json` maps onto `Config` knobs and back, what the tensors are called in the
Hugging Face and GGUF layouts, and how they are reshaped on the way (fused projections,
transposes, llama.cpp's Q/K row permutation, norm offsets). The model itself is one `Transformer`
driven by `Config`; the weight drivers (`lmlab.weights.hf`, `.gguf`, `.export`, `lmlab.peft.io`)
call these methods and know no family by name.

A module subclasses `Family`, fills the class attributes, overrides the methods it needs, and calls
`register_family(TheFamily())` and `register_preset(...)` (see `lmlab.families.registry`).

Directions, with "HF name" meaning the transformers `state_dict` key without wrapper prefixes:

    HF   -> lmlab   `hf_renames` (pure renames) + `hf_tensor_to_lmlab` (reshaped tensors)
    lmlab -> HF     inverse of `hf_renames` + `lmlab_tensor_to_hf`, then `hf_export_prefix`
    GGUF -> HF      `gguf_hf_config` (metadata) + `gguf_layer_names`/`gguf_top_names` (names)
                    + `gguf_tensor_to_hf` (un-permute, norm offsets, transposes)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch

from lmlab.config import Config, ConfigError

Tensors = dict[str, torch.Tensor]


class GGUFSource(Protocol):
    """What a family reads from a parsed GGUF file (`lmlab.weights.gguf.GGUFFile` has it)."""

    path: Any
    metadata: dict[str, Any]
    infos: Mapping[str, Any]  # tensor name -> object with a PyTorch-order `.shape`

    @property
    def architecture(self) -> str: ...


class Family(ABC):
    """One model family: HF config <-> `Config`, and tensor names both ways for HF and GGUF."""

    name: ClassVar[str] = ""  # the value of `Config.family`
    hf_model_types: ClassVar[tuple[str, ...]] = ()  # config.json `model_type`s this family reads
    gguf_archs: ClassVar[tuple[str, ...]] = ()  # GGUF `general.architecture`s it reads
    # (prefix, replacement) pairs stripped from HF tensor names before mapping (wrapper models)
    hf_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    hf_export_prefix: ClassVar[str] = ""  # prepended on export to every name but `lm_head.*`
    # regexes (searched in prefix-stripped HF names) of stored tensors that are not weights of
    # the bare model, such as causal-mask buffers or a pretraining head; the loader drops them
    hf_ignored: ClassVar[tuple[str, ...]] = ()
    # GGUF: per-layer llama.cpp tensor base names (`blk.{i}.<base>`) -> HF module names under
    # `gguf_layer_prefix.{i}.`, and top-level ones (`token_embd`, `output`, ...) -> HF modules
    gguf_layer_prefix: ClassVar[str] = "model.layers"
    gguf_layer_names: ClassVar[dict[str, str]] = {}
    gguf_top_names: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ configs
    @abstractmethod
    def config_from_hf(self, hf: dict[str, Any], name: str) -> Config:
        """The `Config` of a transformers `config.json` dict of one of `hf_model_types`."""

    def hf_config(self, cfg: Config) -> dict[str, Any]:
        """The transformers `config.json` dict for `cfg` (export); `config_from_hf` must invert it."""
        raise ConfigError(
            f"exporting the {self.name} family to the Hugging Face layout is not supported; "
            "save an lmlab checkpoint instead (lmlab.weights.checkpoint.save_checkpoint)"
        )

    def preset_tokenizer(self, cfg: Config) -> str | None:
        """A tokenizer `lmlab.load` builds offline for a preset of this family ("tiktoken"), or None."""
        return None

    def fits(self, cfg: Config) -> bool:
        """Whether `cfg`'s knobs describe this family (names the family of configs saved without one)."""
        return False

    # ------------------------------------------------------------------ HF tensors
    @abstractmethod
    def hf_renames(self, cfg: Config) -> dict[str, str]:
        """HF name -> lmlab name for every tensor that is only renamed (same shape and layout)."""

    def hf_tensor_to_lmlab(self, name: str, t: torch.Tensor, cfg: Config, out: Tensors) -> bool:
        """Put HF tensor `name` (one needing a reshape) into `out` in lmlab form; False if unknown."""
        return False

    def lmlab_tensor_to_hf(
        self, name: str, t: torch.Tensor, sd: Tensors, cfg: Config, out: Tensors
    ) -> bool:
        """Put lmlab tensor `name` (not a pure rename) into `out` in HF form; False if unknown.

        `sd` is the whole lmlab state dict, for tensors that fuse several of ours into one.
        """
        return False

    # ------------------------------------------------------------------ GGUF
    def gguf_hf_config(self, gf: GGUFSource) -> dict[str, Any]:
        """The transformers `config.json` dict described by a GGUF file's metadata (with `gguf_archs`)."""
        raise ConfigError(f"the {self.name} family reads no GGUF files; load an HF folder instead")

    def gguf_tensor_to_hf(
        self, gguf_name: str, t: torch.Tensor, hf: dict[str, Any]
    ) -> torch.Tensor:
        """Undo what llama.cpp's converter did to one tensor (`hf` is `gguf_hf_config`'s dict)."""
        return t

    def __repr__(self) -> str:
        return f"<family {self.name}: hf {list(self.hf_model_types)}, gguf {list(self.gguf_archs)}>"
