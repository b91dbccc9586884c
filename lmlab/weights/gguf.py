"""Read GGUF files (llama.cpp's single-file format) and convert them to the transformers layout.

`read_gguf` parses the header, metadata and tensor table (GGUF v2/v3, ggml's `docs/gguf.md`)
with a bounds-checked reader over an mmap, and dequantizes every tensor with
`lmlab.weights.quants`. We use the `gguf` package for its type tables and as the reference in
tests (tests/test_gguf.py checks this parser against `gguf.GGUFReader` field by field), but not
for parsing: `GGUFReader` builds numpy views for every vocabulary string and took 12.0 s on
SmolLM2's header and 44.6 s on Gemma 3's (262k tokens), against 0.6 s and 1.3 s here
(2026-11-22, shared 2-core CPU).

`gguf_to_hf` then undoes what llama.cpp's `convert_hf_to_gguf.py` did (Llama Q/K row
permutation, Gemma's norms stored as 1 + w, renamed tensors, tied output), giving an HF
`config.json` dict and a state dict with HF names and orientation, so one HF -> lmlab name
map serves both formats.
"""

from __future__ import annotations

import mmap
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType

from lmlab.weights.errors import WeightsError
from lmlab.weights.quants import SUPPORTED_QTYPES, dequantize, quant_nbytes, supported_names

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF metadata value types (gguf.md): id -> (struct code, numpy dtype)
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)
_SCALARS: dict[int, tuple[str, str]] = {
    _UINT8: ("<B", "<u1"),
    _INT8: ("<b", "<i1"),
    _UINT16: ("<H", "<u2"),
    _INT16: ("<h", "<i2"),
    _UINT32: ("<I", "<u4"),
    _INT32: ("<i", "<i4"),
    _FLOAT32: ("<f", "<f4"),
    _BOOL: ("<?", "<u1"),
    _UINT64: ("<Q", "<u8"),
    _INT64: ("<q", "<i8"),
    _FLOAT64: ("<d", "<f8"),
}

_REDOWNLOAD = "the file is truncated or corrupt (e.g. an interrupted download): download it again"


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lives in the file: its GGML type, PyTorch-order shape and byte range."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFFile:
    """A parsed GGUF file: decoded metadata, tensor table, and float32 tensors (PyTorch shapes)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    infos: dict[str, GGUFTensorInfo]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        """`general.architecture`, e.g. "llama" or "gemma3"."""
        return str(self.metadata.get("general.architecture", ""))

    @property
    def qtypes(self) -> dict[str, GGMLQuantizationType]:
        """The GGML type each tensor was stored in before dequantization."""
        return {name: info.qtype for name, info in self.infos.items()}


class _Corrupt(Exception):
    """Internal: the header cannot be parsed at some byte offset."""


class _Reader:
    """A bounds-checked little-endian cursor over the file's bytes."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Corrupt(
                f"{what} at byte {self.pos} needs {n} bytes but the file has {self.size}"
            )

    def scalar(self, vtype: int, what: str) -> Any:
        code = _SCALARS[vtype][0]
        n = struct.calcsize(code)
        self._need(n, what)
        (v,) = struct.unpack_from(code, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar(_UINT64, what)
        self._need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # keep odd vocab bytes recoverable with .encode(errors=...)
            return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int, what: str) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype = self.scalar(_UINT32, what)
            count = self.scalar(_UINT64, what)
            return self.array(etype, count, what)
        if vtype not in _SCALARS:
            raise _Corrupt(f"{what} has unknown value type {vtype}")
        v = self.scalar(vtype, what)
        if vtype == _FLOAT32:  # the shortest decimal that round-trips: 1e-05, not 9.9999997e-06
            return float(repr(np.float32(v)).removeprefix("np.float32(").removesuffix(")"))
        return bool(v) if vtype == _BOOL else v

    def array(self, etype: int, count: int, what: str) -> list[Any]:
        if etype in _SCALARS:
            dtype = np.dtype(_SCALARS[etype][1])
            self._need(count * dtype.itemsize, what)
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * dtype.itemsize
            return arr.astype(bool).tolist() if etype == _BOOL else arr.tolist()
        if etype == _STRING:
            self._need(count * 8, what)  # every string has at least its 8-byte length
            return [self.string(what) for _ in range(count)]
        if etype == _ARRAY:
            self._need(count * 12, what)
            return [self.value(_ARRAY, what) for _ in range(count)]
        raise _Corrupt(f"{what} is an array of unknown value type {etype}")


def read_gguf(path: str | Path, *, tensors: bool = True, threads: int = 1) -> GGUFFile:
    """Parse a GGUF file; with `tensors=True` also dequantize every tensor to float32.

    `threads` is torch's intra-op thread count while dequantizing: ggml blocks are cheap to
    decode and most tensors are small, so extra threads mostly add synchronisation (and stall
    badly when the cores are busy); raise it on an idle many-core machine.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such GGUF file; check the path")
    size = path.stat().st_size
    if size < 4:
        raise WeightsError(f"{path}: {size} bytes is too short to be a GGUF file; {_REDOWNLOAD}")
    with open(path, "rb") as f:
        # A private copy-on-write map: lazily paged, writable from Python's side (so torch takes
        # it without warnings) and never written back to the file.
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        gf = _parse(path, buf, size)
        if tensors:
            with _torch_threads(threads):
                gf.tensors = _load_tensors(gf, buf)
    finally:
        with suppress(BufferError):  # a tensor still views the map; it is freed with the tensor
            buf.close()
    return gf


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (a process-wide setting)."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _parse(path: Path, buf: mmap.mmap, size: int) -> GGUFFile:
    """Parse header, metadata and tensor table; every failure becomes a WeightsError."""
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise WeightsError(
            f"{path}: not a GGUF file (magic bytes {magic!r}, expected {GGUF_MAGIC!r}); "
            "pass a .gguf file (lmlab.load also takes HF folders and checkpoints)"
        )
    r = _Reader(buf, size)
    r.pos = 4
    try:
        version = r.scalar(_UINT32, "version")
        if version not in (2, 3):
            if version & 0xFFFF == 0 and (version >> 24) in (2, 3):
                raise WeightsError(
                    f"{path}: this is a big-endian GGUF file (version {version >> 24}); "
                    "convert it to a little-endian one with gguf-py's gguf-convert-endian"
                )
            raise WeightsError(
                f"{path}: GGUF version {version} is not supported (only 2 and 3); "
                "re-convert the model with a current llama.cpp convert_hf_to_gguf.py"
            )
        n_tensors = r.scalar(_UINT64, "tensor count")
        n_kv = r.scalar(_UINT64, "metadata count")
        if n_tensors * 24 > size or n_kv * 12 > size:
            raise _Corrupt(f"header claims {n_tensors} tensors and {n_kv} metadata entries")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string("a metadata key")
            vtype = r.scalar(_UINT32, f"the type of {key!r}")
            metadata[key] = r.value(vtype, f"metadata {key!r}")
        raw_infos = []
        for _ in range(n_tensors):
            name = r.string("a tensor name")
            n_dims = r.scalar(_UINT32, f"tensor {name!r}")
            if n_dims > _MAX_DIMS:
                raise _Corrupt(f"tensor {name!r} claims {n_dims} dimensions (at most {_MAX_DIMS})")
            dims = [r.scalar(_UINT64, f"tensor {name!r}") for _ in range(n_dims)]
            type_id = r.scalar(_UINT32, f"tensor {name!r}")
            offset = r.scalar(_UINT64, f"tensor {name!r}")
            raw_infos.append((name, dims, type_id, offset))
    except _Corrupt as e:
        raise WeightsError(
            f"{path}: corrupt or truncated GGUF header: {e}; {_REDOWNLOAD}"
        ) from None
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise WeightsError(
            f"{path}: general.alignment={alignment!r} is not a power of two; {_REDOWNLOAD}"
        )
    data_start = -(-r.pos // alignment) * alignment
    infos = {}
    for name, dims, type_id, offset in raw_infos:
        infos[name] = _tensor_info(path, name, dims, type_id, data_start + offset, size)
    return GGUFFile(path=path, version=version, metadata=metadata, infos=infos)


def _tensor_info(
    path: Path, name: str, dims: list[int], type_id: int, offset: int, size: int
) -> GGUFTensorInfo:
    """Check one tensor-table entry against the file and turn ggml dims into a PyTorch shape."""
    try:
        qtype = GGMLQuantizationType(type_id)
    except ValueError:
        raise WeightsError(
            f"{path}: tensor {name!r} has unknown GGML type id {type_id}; the file is corrupt "
            f"or newer than the installed gguf package (pip install -U gguf)"
        ) from None
    shape = tuple(reversed(dims))  # ggml lists the fastest-varying dimension first
    try:
        nbytes = quant_nbytes(qtype, shape)
    except WeightsError as e:
        raise WeightsError(f"{path}: tensor {name!r}: {e}") from None
    if offset + nbytes > size:
        raise WeightsError(
            f"{path}: tensor {name!r} needs bytes {offset}..{offset + nbytes} but the file ends at "
            f"{size}; {_REDOWNLOAD}"
        )
    return GGUFTensorInfo(name=name, qtype=qtype, shape=shape, offset=offset, nbytes=nbytes)


def _load_tensors(gf: GGUFFile, buf: mmap.mmap) -> dict[str, torch.Tensor]:
    """Dequantize every tensor of the file to float32."""
    unsupported = sorted(
        {i.qtype.name for i in gf.infos.values() if i.qtype not in SUPPORTED_QTYPES}
    )
    if unsupported:
        raise WeightsError(
            f"{gf.path}: tensors stored as {', '.join(unsupported)} cannot be dequantized; supported "
            f"types: {supported_names()}. Use a file quantized to one of these (e.g. Q4_K_M, Q8_0)"
        )
    out = {}
    for name, info in gf.infos.items():
        if info.nbytes == 0:
            out[name] = torch.empty(info.shape)
            continue
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        out[name] = dequantize(raw, info.qtype, info.shape)
        del raw
    return out


# ------------------------------------------------------------------------------- GGUF -> HF

_LLAMA_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GEMMA3_LAYER = {
    **_LLAMA_LAYER,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_DECODER_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GPT2_LAYER = {
    "attn_norm": "ln_1",
    "attn_qkv": "attn.c_attn",
    "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc",
    "ffn_down": "mlp.c_proj",
}
_GPT2_TOP = {
    "token_embd": "transformer.wte",
    "position_embd": "transformer.wpe",
    "output_norm": "transformer.ln_f",
    "output": "lm_head",
}
_ARCHS = ("llama", "gemma3", "gpt2")
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def gguf_to_hf(
    source: str | Path | GGUFFile,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Convert a GGUF file to `(hf_config, hf_state_dict, gguf_metadata)` in the transformers layout."""
    gf = source if isinstance(source, GGUFFile) else read_gguf(source)
    if not gf.tensors and gf.infos:
        gf = read_gguf(gf.path)
    arch = gf.architecture
    if arch not in _ARCHS:
        raise WeightsError(
            f"{gf.path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(_ARCHS)}. "
            "Load the original Hugging Face folder with lmlab.load(folder) instead"
        )
    cfg = _hf_config(gf)
    if arch == "gpt2":
        sd = _gpt2_state_dict(gf)
    else:
        sd = _decoder_state_dict(gf, cfg, _GEMMA3_LAYER if arch == "gemma3" else _LLAMA_LAYER)
    if cfg[
        "tie_word_embeddings"
    ]:  # as transformers' own state_dict(): the head shares the embedding
        sd["lm_head.weight"] = sd[
            "transformer.wte.weight" if arch == "gpt2" else "model.embed_tokens.weight"
        ]
    return cfg, sd, gf.metadata


def _rename(
    gf: GGUFFile, name: str, layer: dict[str, str], top: dict[str, str], prefix: str
) -> str | None:
    """HF name of GGUF tensor `name`, or None when this architecture has no place for it."""
    if m := _BLOCK.fullmatch(name):
        hf = layer.get(m[2])
        return f"{prefix}.{m[1]}.{hf}.{m[3]}" if hf else None
    base, _, suffix = name.rpartition(".")
    hf = top.get(base)
    return f"{hf}.{suffix}" if hf and suffix in ("weight", "bias") else None


def _unknown(gf: GGUFFile, names: list[str]) -> WeightsError:
    return WeightsError(
        f"{gf.path}: {len(names)} tensors have no place in a {gf.architecture} model, e.g. {names[:5]}; "
        "this GGUF variant is not supported yet: load the original Hugging Face folder instead"
    )


def _decoder_state_dict(
    gf: GGUFFile, cfg: dict[str, Any], layer: dict[str, str]
) -> dict[str, torch.Tensor]:
    """State dict of a Llama-style or Gemma 3 decoder with HF names and HF orientation."""
    is_gemma = gf.architecture == "gemma3"
    sd, unknown = {}, []
    for name, t in gf.tensors.items():
        if name == "rope_freqs.weight":  # Llama 3.x rope scaling, baked into a tensor by llama.cpp
            warnings.warn(
                f"{gf.path}: rope_freqs.weight (Llama 3 rope scaling) has no HF config equivalent and "
                "is not applied; long-context positions may differ from the original model",
                stacklevel=3,
            )
            continue
        hf = _rename(gf, name, layer, _DECODER_TOP, "model.layers")
        if hf is None:
            unknown.append(name)
            continue
        if not is_gemma and (".attn_q." in name or ".attn_k." in name):
            heads = cfg["num_attention_heads"] if ".attn_q." in name else cfg["num_key_value_heads"]
            t = _unpermute_rope(t, heads)
        elif is_gemma and name.endswith("norm.weight"):
            t = t - 1.0  # the converter stores Gemma's (1 + w) norm weights as 1 + w
        sd[hf] = t
    if unknown:
        raise _unknown(gf, unknown)
    return sd


def _unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs -> HF's rotate-half halves).

    The converter maps rows [h, 2, d/2] -> [h, d/2, 2] within each head; this maps them back.
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise WeightsError(
            f"q/k projection with {rows} rows cannot be split into {n_heads} heads of even size"
        )
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
        .transpose(1, 2)
        .reshape(w.shape)
        .contiguous()
    )


def _gpt2_state_dict(gf: GGUFFile) -> dict[str, torch.Tensor]:
    """GPT-2 state dict: HF keeps Conv1D weights as [in, out], GGUF as [out, in]."""
    sd, unknown = {}, []
    for name, t in gf.tensors.items():
        hf = _rename(gf, name, _GPT2_LAYER, _GPT2_TOP, "transformer.h")
        if hf is None:
            unknown.append(name)
            continue
        if hf.endswith(".weight") and any(k in hf for k in ("c_attn", "c_proj", "c_fc")):
            t = t.t().contiguous()
        sd[hf] = t
    if unknown:
        raise _unknown(gf, unknown)
    return sd


# ------------------------------------------------------------------------------ HF config


def _hf_config(gf: GGUFFile) -> dict[str, Any]:
    """An HF `config.json` dict built from GGUF metadata, as transformers would write it."""
    md, arch = gf.metadata, gf.architecture

    def get(key: str, default: Any = None) -> Any:
        return md.get(f"{arch}.{key}", default)

    def need(key: str) -> Any:
        v = get(key)
        if v is None:
            raise WeightsError(
                f"{gf.path}: metadata {arch}.{key} is missing; the file is incomplete, re-convert it"
            )
        return v

    embd = gf.infos.get("token_embd.weight")
    tokens = md.get("tokenizer.ggml.tokens")
    vocab = embd.shape[0] if embd else get("vocab_size") or (len(tokens) if tokens else None)
    if vocab is None:
        raise WeightsError(
            f"{gf.path}: cannot tell the vocabulary size (no token_embd.weight, no token list)"
        )
    special = {
        f"{hf}_token_id": md[f"tokenizer.ggml.{k}_token_id"]
        for hf, k in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
        if f"tokenizer.ggml.{k}_token_id" in md
    }
    tied = "output.weight" not in gf.infos
    hidden, n_layers = need("embedding_length"), need("block_count")
    heads = need("attention.head_count")

    if arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": vocab,
            "n_embd": hidden,
            "n_layer": n_layers,
            "n_head": heads,
            "n_inner": get("feed_forward_length"),
            "n_positions": need("context_length"),
            "n_ctx": need("context_length"),
            "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5),
            "activation_function": "gelu_new",
            "tie_word_embeddings": tied,
            **special,
        }

    kv_heads = get("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts (hybrid models); transformers takes the max
        kv_heads = max(kv_heads)
    cfg: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_scaling": _rope_scaling(gf),
        "tie_word_embeddings": tied,
        "attention_bias": "blk.0.attn_q.bias" in gf.infos,
        **special,
    }
    if arch == "gemma3":
        head_dim = get("attention.key_length", 256)
        pattern = get("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # per-layer flags: True = sliding window
            layer_types = ["sliding_attention" if s else "full_attention" for s in pattern]
        else:
            layer_types = [
                "sliding_attention" if (i + 1) % pattern else "full_attention"
                for i in range(n_layers)
            ]
        # llama.cpp scales Gemma 3 27B (62 layers) queries by hidden/heads, the others by head_dim
        scalar = hidden // heads if n_layers == 62 else head_dim
        return {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            **cfg,
            "head_dim": head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "rope_theta": get("rope.freq_base", 1_000_000.0),
            # newer converters store the local base; older files leave it out (every Gemma 3: 10k)
            "rope_local_base_freq": get("rope.freq_base_swa", 10_000.0),
            "sliding_window": get("attention.sliding_window", 4096),
            **({"sliding_window_pattern": pattern} if isinstance(pattern, int) else {}),
            "layer_types": layer_types,
            "query_pre_attn_scalar": scalar,
            "final_logit_softcapping": get("final_logit_softcapping"),
            "attn_logit_softcapping": get("attn_logit_softcapping"),
            "use_bidirectional_attention": False,
        }
    name = f"{md.get('general.name', '')} {md.get('general.basename', '')}".lower()
    mistral = "mistral" in name  # llama.cpp writes Mistral models as arch "llama"
    head_dim = get("attention.key_length") or get("rope.dimension_count") or hidden // heads
    out = {
        "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
        "model_type": "mistral" if mistral else "llama",
        **cfg,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rope_theta": get("rope.freq_base", 10_000.0),
        "mlp_bias": "blk.0.ffn_up.bias" in gf.infos,
    }
    if mistral:
        out["sliding_window"] = get("attention.sliding_window")
    return out


def _rope_scaling(gf: GGUFFile) -> dict[str, Any] | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*`, or None when the file has no scaling."""
    md, p = gf.metadata, f"{gf.architecture}.rope.scaling."
    kind = md.get(p + "type")
    if kind in (None, "none"):
        return None
    out: dict[str, Any] = {"rope_type": kind}
    for gguf_key, hf_key in (
        ("factor", "factor"),
        ("original_context_length", "original_max_position_embeddings"),
        ("attn_factor", "attention_factor"),
        ("yarn_beta_fast", "beta_fast"),
        ("yarn_beta_slow", "beta_slow"),
    ):
        if p + gguf_key in md:
            out[hf_key] = md[p + gguf_key]
    return out
