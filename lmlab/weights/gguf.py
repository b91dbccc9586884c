"""Read GGUF files (llama.cpp's single-file format) and convert them to the transformers layout.

`read_gguf` parses the header, metadata and tensor table (GGUF v2/v3, ggml's `docs/gguf.md`)
with a bounds-checked reader over an mmap, and dequantizes every tensor with
`lmlab.weights.quants`. We use the `gguf` package for its type tables and as the reference in
tests (tests/test_gguf.py checks this parser against `gguf.GGUFReader` field by field), but not
for parsing: `GGUFReader` builds numpy views for every vocabulary string and took 12.0 s on
SmolLM2's header and 44.6 s on Gemma 3's (262k tokens), against 0.6 s and 1.3 s here
(2026-11-22, shared 2-core CPU).

`gguf_to_hf` then undoes what llama.cpp's `convert_hf_to_gguf.py` did (renamed tensors, tied
output, and through the family module of the file's architecture: Q/K row permutation, norms
stored with an offset, transposes), giving an HF `config.json` dict and a state dict with HF
names and orientation, so one HF -> lmlab name map serves both formats.
"""

from __future__ import annotations

import mmap
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType

from lmlab.config import ConfigError
from lmlab.families import Family, family_for_gguf, gguf_archs
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
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # kept blocks: uint8 bytes

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


def read_gguf(
    path: str | Path,
    *,
    tensors: bool = True,
    threads: int = 1,
    keep: Callable[[GGUFTensorInfo], bool] | None = None,
) -> GGUFFile:
    """Parse a GGUF file; with `tensors=True` also dequantize every tensor to float32.

    Tensors for which `keep(info)` is true are not dequantized: their raw block bytes go to
    `GGUFFile.raw` instead (a copy, so the file can be closed).

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
                gf.tensors, gf.raw = _load_tensors(gf, buf, keep)
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


def _load_tensors(
    gf: GGUFFile, buf: mmap.mmap, keep: Callable[[GGUFTensorInfo], bool] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Dequantize every tensor of the file to float32, except those `keep` keeps as raw bytes."""
    kept = {n for n, i in gf.infos.items() if keep is not None and i.nbytes and keep(i)}
    unsupported = sorted(
        {i.qtype.name for n, i in gf.infos.items() if i.qtype not in SUPPORTED_QTYPES}
        - {gf.infos[n].qtype.name for n in kept}
    )
    if unsupported:
        raise WeightsError(
            f"{gf.path}: tensors stored as {', '.join(unsupported)} cannot be dequantized; supported "
            f"types: {supported_names()}. Use a file quantized to one of these (e.g. Q4_K_M, Q8_0)"
        )
    out, raws = {}, {}
    for name, info in gf.infos.items():
        if info.nbytes == 0:
            out[name] = torch.empty(info.shape)
            continue
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        if name in kept:
            raws[name] = raw.clone()
        else:
            out[name] = dequantize(raw, info.qtype, info.shape)
        del raw
    return out, raws


# ------------------------------------------------------------------------------- GGUF -> HF

_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def gguf_to_hf(
    source: str | Path | GGUFFile,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Convert a GGUF file to `(hf_config, hf_state_dict, gguf_metadata)` in the transformers layout."""
    gf = source if isinstance(source, GGUFFile) else read_gguf(source)
    if not gf.tensors and gf.infos:
        gf = read_gguf(gf.path)
    try:
        family = family_for_gguf(gf.architecture)
    except ConfigError:
        raise WeightsError(
            f"{gf.path}: GGUF architecture {gf.architecture!r} is not supported; supported: "
            f"{', '.join(gguf_archs())}. Load the original Hugging Face folder with "
            "lmlab.load(folder) instead"
        ) from None
    try:
        cfg = family.gguf_hf_config(gf)
        sd = _state_dict(gf, family, cfg)
    except ConfigError as e:
        raise WeightsError(f"{gf.path}: {e}") from None
    if cfg[
        "tie_word_embeddings"
    ]:  # as transformers' own state_dict(): the head shares the embedding
        sd["lm_head.weight"] = sd[family.gguf_top_names["token_embd"] + ".weight"]
    return cfg, sd, gf.metadata


def _hf_name(name: str, family: Family) -> str | None:
    """HF name of GGUF tensor `name`, or None when the family has no place for it."""
    if m := _BLOCK.fullmatch(name):
        hf = family.gguf_layer_names.get(m[2])
        return f"{family.gguf_layer_prefix}.{m[1]}.{hf}.{m[3]}" if hf else None
    base, _, suffix = name.rpartition(".")
    hf = family.gguf_top_names.get(base)
    return f"{hf}.{suffix}" if hf and suffix in ("weight", "bias") else None


def _state_dict(gf: GGUFFile, family: Family, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict with HF names and HF orientation (the family undoes the converter's changes)."""
    sd, unknown = {}, []
    for name, t in gf.tensors.items():
        if name == "rope_freqs.weight":  # Llama 3.x rope scaling, baked into a tensor by llama.cpp
            warnings.warn(
                f"{gf.path}: rope_freqs.weight (rope scaling baked into a tensor) has no HF config "
                "equivalent and "
                "is not applied; long-context positions may differ from the original model",
                stacklevel=3,
            )
            continue
        hf = _hf_name(name, family)
        if hf is None:
            unknown.append(name)
            continue
        sd[hf] = family.gguf_tensor_to_hf(name, t, cfg)
    if unknown:
        raise WeightsError(
            f"{gf.path}: {len(unknown)} tensors have no place in a {gf.architecture} model, e.g. "
            f"{unknown[:5]}; this GGUF variant is not supported yet: load the original Hugging "
            "Face folder instead"
        )
    return sd
