"""`lmlab.load(source)`: one entry point for presets, HF folders, GGUF files, lmlab checkpoints,
the packaged real models, and hub repository ids.

Resolution order: an existing path; a packaged real model name (`smollm2-135m-instruct`,
`gemma3-270m`, `minilm-l6`); a preset name (random init); a hub id (`owner/name`, or
`hf:name` for ids without an owner such as `hf:gpt2`). A training run folder or checkpoint
(`lmlab train`'s out_dir) is refused with the hint to `lmlab convert` it first.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lmlab.config import Config, ConfigError
from lmlab.families import PRESETS, family_of, preset
from lmlab.model import Transformer
from lmlab.packaged import PACKAGED, packaged_path
from lmlab.weights import hub
from lmlab.weights.errors import WeightsError

if TYPE_CHECKING:
    from lmlab.tokenizers.base import Tokenizer

Tensors = dict[str, torch.Tensor]
DTypeLike = torch.dtype | str | None
Keep = bool | Literal["strict"]


def load(
    source: str | Path,
    *,
    dtype: DTypeLike = None,
    device: str | torch.device | None = None,
    keep_quantized: Keep = False,
) -> tuple[Transformer, Tokenizer | None]:
    """Model and tokenizer from a preset, folder, `.gguf`, checkpoint, packaged model or hub id.

    `dtype=None` keeps what the file stores (GGUF blocks dequantize to float32; presets are
    float32). The model is returned in eval mode; the tokenizer is None when there is none.
    `keep_quantized=True` (GGUF only) builds the linear layers from the file's quantized blocks
    (`lmlab.quantized` layers, `lmlab.weights.gguf_quantized`), never holding the model in
    float32; tensors that cannot be kept are dequantized with a warning, or refused with
    `keep_quantized="strict"`.
    """
    dtype = as_dtype(dtype)
    if keep_quantized not in (False, True, "strict"):
        raise WeightsError(f"keep_quantized={keep_quantized!r}: use True, False or 'strict'")
    path = Path(source).expanduser()
    if path.exists():
        return load_path(path, dtype=dtype, device=device, keep_quantized=keep_quantized)
    name = str(source)
    if name in PACKAGED:
        return _load_packaged(name, dtype, device, keep_quantized)
    _refuse_keep(keep_quantized, name)
    if name in PRESETS:
        return _load_preset(name, dtype, device)
    if name.startswith("hf:") or hub.looks_like_repo_id(name):
        repo = name.removeprefix("hf:")
        return load_path(hub.download(repo), dtype=dtype, device=device, name=repo)
    raise WeightsError(_unknown_source(name))


def _refuse_keep(keep_quantized: Keep, source: Any) -> None:
    if keep_quantized:
        raise WeightsError(
            f"{source}: keep_quantized applies to .gguf files only; load it without it and "
            "quantize with lmlab.generate.quantize.quantize(model, kind='int4')"
        )


def _unknown_source(name: str) -> str:
    if name.endswith((".gguf", ".safetensors")) or "/" in name or "\\" in name:
        return f"{name}: no such file or folder; check the path"
    known = sorted({*PRESETS, *PACKAGED})
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return (
        f"unknown model {name!r}: not a file or folder, preset, packaged model or hub id.{hint} "
        f"Presets and packaged models: {', '.join(known)}. Hub ids look like 'owner/name' "
        "(or 'hf:name' for ids without an owner)"
    )


def as_dtype(dtype: DTypeLike) -> torch.dtype | None:
    """`dtype` as a torch floating dtype ("bfloat16", torch.float16, None passes through)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise WeightsError(
            f"dtype {dtype!r} is not a torch floating dtype; use float32, bfloat16 or float16"
        )
    return d


# ------------------------------------------------------------------------------ sources


def load_path(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    name: str | None = None,
    keep_quantized: Keep = False,
) -> tuple[Transformer, Tokenizer | None]:
    """Load from a local `.gguf` file, HF folder or lmlab checkpoint folder."""
    from lmlab.weights.checkpoint import is_checkpoint
    from lmlab.weights.training import SUFFIXES, convert_hint, is_training_run

    path = Path(path)
    if path.is_file() and (path.suffix == ".gguf" or _has_gguf_magic(path)):
        return _load_gguf(path, dtype, device, name, keep_quantized)
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if keep_quantized and len(ggufs) == 1 and not (path / "config.json").is_file():
        return _load_gguf(ggufs[0], dtype, device, name, keep_quantized)
    _refuse_keep(keep_quantized, path)
    if path.is_file():
        if path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
            return load_path(path.parent, dtype=dtype, device=device, name=name)
        if path.suffix in SUFFIXES:  # torch pickles: a training checkpoint, or a damaged file
            raise WeightsError(_training_file(path))
        raise WeightsError(
            f"{path}: lmlab reads .gguf files and folders (HF: config.json + *.safetensors, or an "
            "lmlab checkpoint); pass the folder or a .gguf file"
        )
    if is_checkpoint(path):
        return _load_checkpoint(path, dtype, device)
    if (path / "config.json").is_file():
        return _load_hf_folder(path, dtype, device, name)
    if is_training_run(path):
        raise WeightsError(convert_hint(path))
    if len(ggufs) == 1:
        return _load_gguf(ggufs[0], dtype, device, name)
    if ggufs:
        raise WeightsError(
            f"{path}: holds {len(ggufs)} .gguf files; pass one of them: {[g.name for g in ggufs]}"
        )
    raise WeightsError(
        f"{path}: no weights found (no config.json + *.safetensors, no .gguf, not an lmlab "
        "checkpoint); point at a model folder, a .gguf file, a preset name or a hub id"
    )


def _training_file(path: Path) -> str:
    """The error for a torch file: a damaged one, or the hint to convert a training checkpoint."""
    import zipfile

    from lmlab.weights.training import convert_hint

    if not zipfile.is_zipfile(path):
        return (
            f"{path}: not a readable torch checkpoint (empty, truncated or corrupt); use an "
            "earlier checkpoint of the run or train again"
        )
    return convert_hint(path)


def _has_gguf_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _load_gguf(
    path: Path, dtype: torch.dtype | None, device: Any, name: str | None, keep: Keep = False
) -> tuple[Transformer, Tokenizer | None]:
    from lmlab.weights.gguf import GGUFFile, gguf_to_hf, read_gguf
    from lmlab.weights.hf import config_from_hf, hf_to_lmlab

    def convert(gf: GGUFFile) -> tuple[Config, Tensors]:
        hf_cfg, hf_sd, _ = gguf_to_hf(gf)
        label = name or gf.metadata.get("general.name") or path.stem
        cfg = _config(config_from_hf, hf_cfg, label, path)
        cfg.extra["source"] = str(path)
        return cfg, _convert(hf_to_lmlab, hf_sd, cfg, path)

    dtype = dtype or torch.float32
    if keep:
        from lmlab.weights.gguf_quantized import keepable, load_kept

        gf = read_gguf(path, keep=keepable)
        tok = _gguf_tokenizer(gf.metadata, path)
        build = functools.partial(build_model, where=path)
        model = load_kept(gf, convert, build, dtype, strict=keep == "strict")
        if model is not None:
            if tok is not None:
                from lmlab.tokenizers import check_vocab

                check_vocab(tok, model.cfg)
            return (model.to(device) if device is not None else model).eval(), tok
    gf = read_gguf(path)
    cfg, sd = convert(gf)
    tok = _gguf_tokenizer(gf.metadata, path)
    del gf  # its float tensors: only those `sd` still holds stay
    return _finish(cfg, sd, tok, dtype, device, path)


def _load_hf_folder(
    folder: Path, dtype: torch.dtype | None, device: Any, name: str | None
) -> tuple[Transformer, Tokenizer | None]:
    from lmlab.weights.hf import config_from_hf, hf_to_lmlab
    from lmlab.weights.hf_folder import read_hf_folder

    hf_cfg, hf_sd = read_hf_folder(folder)
    cfg = _config(
        config_from_hf, hf_cfg, name or hf_cfg.get("_name_or_path") or folder.name, folder
    )
    cfg.extra["source"] = str(folder)
    sd = _convert(hf_to_lmlab, hf_sd, cfg, folder)
    return _finish(cfg, sd, _folder_tokenizer(folder), dtype, device, folder)


def _load_checkpoint(
    folder: Path, dtype: torch.dtype | None, device: Any
) -> tuple[Transformer, Tokenizer | None]:
    from lmlab.weights.checkpoint import read_checkpoint

    cfg, sd = read_checkpoint(folder)
    return _finish(cfg, sd, _folder_tokenizer(folder), dtype, device, folder)


def _load_preset(
    name: str, dtype: torch.dtype | None, device: Any
) -> tuple[Transformer, Tokenizer | None]:
    cfg = preset(name)
    model = Transformer(cfg).to(device=device, dtype=dtype or torch.float32).eval()
    return model, _preset_tokenizer(cfg)


def _preset_tokenizer(cfg: Config) -> Tokenizer | None:
    """The tokenizer the preset's family names, if it can be built offline and fits the vocabulary."""
    if family_of(cfg).preset_tokenizer(cfg) != "tiktoken":
        return None
    from lmlab.tokenizers.tiktoken_gpt2 import default_ranks_path, gpt2_tiktoken

    return gpt2_tiktoken() if default_ranks_path().is_file() else None


def _load_packaged(
    name: str, dtype: torch.dtype | None, device: Any, keep_quantized: Keep = False
) -> tuple[Transformer, Tokenizer | None]:
    pm = PACKAGED[name]
    path = packaged_path(name)
    if path is None:
        path = hub.download(pm.hub_repo, install_hint=pm.install)
    return load_path(path, dtype=dtype, device=device, name=name, keep_quantized=keep_quantized)


# ------------------------------------------------------------------------------ building


def _config(fn: Any, hf_cfg: dict[str, Any], name: str, where: Path) -> Config:
    try:
        return fn(hf_cfg, name=str(name))
    except (ConfigError, KeyError, TypeError) as e:
        raise WeightsError(f"{where}: cannot build a Config from its config ({e})") from None


def _convert(fn: Any, hf_sd: Tensors, cfg: Config, where: Path) -> Tensors:
    try:
        return fn(hf_sd, cfg)
    except KeyError as e:
        raise WeightsError(f"{where}: {e.args[0] if e.args else e}") from None


class _SkipRandomInit(TorchFunctionMode):
    """Within its `with` block (this thread only), random initializers leave their tensor as it is.

    A scoped torch-function mode instead of patching `torch.nn.init`: nothing global changes, and
    the meta device is avoided because its init kernels import torch's compiler stack (seconds).
    """

    SKIP = frozenset(
        {
            nn.init.uniform_,
            nn.init.normal_,
            nn.init.trunc_normal_,
            nn.init.kaiming_uniform_,
            nn.init.kaiming_normal_,
            nn.init.xavier_uniform_,
            nn.init.xavier_normal_,
            torch.Tensor.uniform_,
            torch.Tensor.normal_,
        }
    )

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in self.SKIP:  # nn.init passes the tensor by keyword, Tensor methods as self
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _skeleton(cfg: Config) -> Transformer:
    """A `Transformer` whose parameters are uninitialized `torch.empty` memory (the weights overwrite them)."""
    with _SkipRandomInit():
        return Transformer(cfg)


def build_model(
    cfg: Config,
    sd: Tensors,
    *,
    dtype: torch.dtype | None = None,
    device: Any = None,
    where: Any = "weights",
) -> Transformer:
    """A `Transformer` holding exactly the tensors of lmlab state dict `sd` (no random init pass)."""
    model = _skeleton(cfg)
    expected = {
        k: v
        for k, v in model.state_dict().items()
        if not (cfg.tie_embeddings and k == "unembed.weight")
    }
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise WeightsError(
            f"{where}: the weights do not fit a {cfg.family or cfg.name} model of this config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise WeightsError(
                f"{where}: {k} has shape {tuple(v.shape)} but the config needs {tuple(expected[k].shape)}; "
                "config and weights do not belong together"
            )
    floats = {v.dtype for v in sd.values() if v.is_floating_point()}
    if dtype is None and len(floats) > 1:  # one dtype for the whole model: the embedding's
        dtype = sd["embed.weight"].dtype
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)
    if model.unembed is not None and cfg.tie_embeddings:
        model.unembed.weight = model.embed.weight
    return model.to(device=device).eval() if device is not None else model.eval()


def _finish(
    cfg: Config,
    sd: Tensors,
    tok: Tokenizer | None,
    dtype: torch.dtype | None,
    device: Any,
    where: Path,
) -> tuple[Transformer, Tokenizer | None]:
    if tok is not None:
        from lmlab.tokenizers import check_vocab

        check_vocab(tok, cfg)
    return build_model(cfg, sd, dtype=dtype, device=device, where=where), tok


# ------------------------------------------------------------------------------ tokenizers


def _folder_tokenizer(folder: Path) -> Tokenizer | None:
    """The tokenizer saved in `folder`, or None when there is none."""
    from lmlab.tokenizers import load_tokenizer
    from lmlab.tokenizers.base import MANIFEST

    if not any((folder / f).is_file() for f in (MANIFEST, "tokenizer.json")):
        return None
    return load_tokenizer(folder)


def _gguf_tokenizer(meta: dict[str, Any], where: Path) -> Tokenizer | None:
    """The tokenizer rebuilt from GGUF metadata; None (with a warning) when it cannot be rebuilt."""
    if "tokenizer.ggml.tokens" not in meta:
        return None
    from lmlab.tokenizers import TokenizerError, from_gguf_metadata

    try:
        return from_gguf_metadata(meta)
    except TokenizerError as e:  # the weights are still usable: load a tokenizer separately
        warnings.warn(f"{where}: no tokenizer ({e})", stacklevel=4)
        return None
