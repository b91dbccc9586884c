"""GGUF weights kept quantized: `lmlab.load(path, keep_quantized=True)`.

The linear layers of a GGUF model are built from its blocks without a float32 copy of the model:
- Q4_0, Q4_1, Q4_K -> `Int4Linear` with groups of 32: codes as stored, scale and zero per block
  (Q4_K: per 32-element sub-block, d*sc and dmin*m). The weights are GGUF's own except that the
  kernel's scale and zero (zero = min + 8 * scale) are rounded to bfloat16.
- Q8_0, Q5_0, Q5_1, Q5_K, Q6_K -> `Int8Linear`, one scale per output row: a requantization
  (dequantized one tensor at a time, then rounded to 255 levels per row).
Other 2-D linear weights in a quantized type (Q2_K, Q3_K, MXFP4) are dequantized to float32 with a
one-line warning (an error with `keep_quantized="strict"`); float tensors, norms and biases stay
float. A quantized embedding table is dequantized (lookups need rows); a tied unembedding gets
its own quantized layer from the same blocks.

The conversion to lmlab's layout (`gguf_to_hf`, `hf_to_lmlab`: renames, llama.cpp's Q/K row
permutation, fused or split projections) is traced, not re-implemented: each kept tensor enters
it as a float64 "row probe" (value = tensor id * 2**21 + row, expanded without memory), and what
comes out says which source rows each lmlab weight holds. A conversion that is not a gather of
rows (e.g. a transpose that stays) cannot keep blocks: the model then loads in float32, with a
warning (an error when strict).

Speed: an int4 weight's block bytes are gathered by row, decoded once into the int32 codes torch's
packing takes, and packed (no float weight, no portable nibbles); all of it on one torch thread.
SmolLM2-135M's Q4_1 file loads in about half the time of its float32 load (bench/load_speed.py
--keep-quantized).
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from lmlab.config import Config
from lmlab.quantized import Int4Linear, Int8Linear, quantize_weight
from lmlab.weights.errors import WeightsError
from lmlab.weights.gguf import GGUFFile, GGUFTensorInfo, _torch_threads
from lmlab.weights.quants import INT4_QTYPES, dequantize, int4_blocks

INT8_QTYPES = (Q.Q8_0, Q.Q5_0, Q.Q5_1, Q.Q5_K, Q.Q6_K)
FLOAT_QTYPES = (Q.F32, Q.F16, Q.BF16, Q.F64)
_ID = 1 << 21  # rows per tensor id in a probe value (exact in float64 for any real model)
_PROBE = torch.float64

Segments = list[tuple[str, torch.Tensor]]  # (GGUF tensor name, its rows), in output order


class NotKept(Exception):
    """Internal: the blocks cannot be kept for this model (the caller loads it in float)."""


def keepable(info: GGUFTensorInfo) -> bool:
    """Whether `read_gguf` should keep this tensor's blocks (a 2-D int4 or int8-able type)."""
    return len(info.shape) == 2 and info.qtype in (*INT4_QTYPES, *INT8_QTYPES)


def add_row_probes(gf: GGUFFile) -> None:
    """Put a float64 row probe in `gf.tensors` for each kept tensor (value = id * 2**21 + row)."""
    for i, name in enumerate(gf.raw):
        n, k = gf.infos[name].shape
        gf.tensors[name] = (torch.arange(n, dtype=_PROBE) + (i + 1) * _ID)[:, None].expand(n, k)


def unkept_warning(gf: GGUFFile) -> str:
    """'' or the line naming tensors in quantized types that will be dequantized to float."""
    lost = Counter(
        i.qtype.name
        for n, i in gf.infos.items()
        if n not in gf.raw and i.qtype not in FLOAT_QTYPES and len(i.shape) >= 2
    )
    if not lost:
        return ""
    what = ", ".join(f"{c} {q}" for q, c in sorted(lost.items()))
    return (
        f"{gf.path}: keep_quantized: {what} tensors dequantized to float32 (kept: 2-D "
        f"{', '.join(q.name for q in (*INT4_QTYPES, *INT8_QTYPES))})"
    )


def segments(t: torch.Tensor, names: list[str]) -> Segments:
    """Which source rows a probe came out as; raises NotKept if it is not a gather of rows."""
    if t.dim() != 2 or not (t.stride(1) == 0 or bool((t == t[:, :1]).all())):
        raise NotKept(f"a weight of shape {tuple(t.shape)} is not a row gather of its blocks")
    ids = t[:, 0].long()
    tid, rows = ids // _ID - 1, ids % _ID
    cuts = [0, *((tid[1:] != tid[:-1]).nonzero().flatten() + 1).tolist(), len(ids)]
    out = [(names[int(tid[a])], rows[a:b]) for a, b in itertools.pairwise(cuts)]
    if len({n for n, _ in out}) != len(out):
        raise NotKept("a weight interleaves rows of several GGUF tensors")
    return out


def build_quantized(
    gf: GGUFFile,
    cfg: Config,
    sd: dict[str, torch.Tensor],
    build: Callable[..., nn.Module],
    dtype: torch.dtype,
) -> nn.Module:
    """The model of lmlab state dict `sd` (probes where blocks are kept) with quantized linears.

    `build(cfg, sd, dtype=...)` builds a model from a full state dict (`build_model`).
    """
    names = list(gf.raw)
    plans = {k: segments(v, names) for k, v in sd.items() if v.dtype == _PROBE}
    for k in plans:  # the probes are read: free them (un-permuted ones are float64 copies)
        sd[k] = torch.zeros((), dtype=dtype).expand(sd[k].shape)
    model = build(cfg, sd, dtype=dtype)
    uses = Counter(n for segs in plans.values() for n, _ in segs)
    tied_head = cfg.tie_embeddings and getattr(model, "unembed", None) is not None
    if tied_head and "embed.weight" in plans:
        uses.update(n for n, _ in plans["embed.weight"])
    for key, segs in plans.items():
        path, _, attr = key.rpartition(".")
        mod = model.get_submodule(path)
        if _quantizable(path, mod, attr):
            _replace(model, path, _layer(gf, segs, mod.bias))
        else:  # an embedding table, a router, a 3-D weight: float rows
            setattr(mod, attr, nn.Parameter(_float_rows(gf, segs).to(dtype)))
        if not (tied_head and key == "embed.weight"):
            _release(gf, segs, uses)
    if tied_head and "embed.weight" in plans:
        segs = plans["embed.weight"]
        rows = model.embed.weight.detach() if dtype == torch.float32 else None  # the same floats
        _replace(model, "unembed", _layer(gf, segs, model.unembed.bias, rows))
        _release(gf, segs, uses)
    return model


def _quantizable(path: str, mod: nn.Module, attr: str) -> bool:
    name = path.rpartition(".")[2]
    return isinstance(mod, nn.Linear) and attr == "weight" and name not in ("router", "pooler")


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _release(gf: GGUFFile, segs: Segments, uses: Counter) -> None:
    """Free a tensor's raw blocks once every weight built from it is built."""
    for name, _ in segs:
        uses[name] -= 1
        if uses[name] == 0:
            gf.raw.pop(name, None)


def _whole(t: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether `rows` are all of t's rows in order."""
    return len(rows) == t.shape[0] and bool((rows == torch.arange(len(rows))).all())


def _rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t[rows], without a copy when rows are all of t in order."""
    return t if _whole(t, rows) else t[rows]


def _float_rows(gf: GGUFFile, segs: Segments) -> torch.Tensor:
    parts = []
    for name, rows in segs:
        info = gf.infos[name]
        parts.append(_rows(dequantize(gf.raw[name], info.qtype, info.shape), rows))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _int4_rows(
    gf: GGUFFile, name: str, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int32 codes, scale and min of `rows` of an int4 tensor: its block bytes are gathered
    (a few bytes per 32 weights), then decoded once into the codes torch's packing takes."""
    info, raw = gf.infos[name], gf.raw[name]
    out, k = info.shape
    by_row = raw.view(out, -1)
    if not _whole(by_row, rows):
        by_row = by_row[rows]
    return int4_blocks(by_row, info.qtype, (by_row.shape[0], k), dtype=torch.int32)


def _layer(
    gf: GGUFFile, segs: Segments, bias: torch.Tensor | None, floats: torch.Tensor | None = None
) -> nn.Module:
    """An Int4Linear from int4 blocks (as stored), else an Int8Linear (per-row requantization of
    the dequantized rows, or of `floats` when the caller already holds them)."""
    bias = None if bias is None else bias.detach().float()
    if all(gf.infos[n].qtype in INT4_QTYPES for n, _ in segs):
        parts = [_int4_rows(gf, name, rows) for name, rows in segs]
        codes, scale, mins = (
            torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True)
        )
        return Int4Linear.from_blocks(codes, scale, mins, bias, group_size=32)
    w = _float_rows(gf, segs) if floats is None else floats
    q, scale = quantize_weight(w, torch.bfloat16)  # (in slices: no whole float temporaries)
    return Int8Linear.from_quantized(q, scale, bias)


def load_kept(
    gf: GGUFFile,
    convert: Callable[[GGUFFile], tuple[Config, dict[str, torch.Tensor]]],
    build: Callable[..., nn.Module],
    dtype: torch.dtype,
    strict: bool,
) -> nn.Module | None:
    """The model with kept blocks, or None (after a warning) when they cannot be kept.

    `convert(gf)` runs the normal GGUF -> lmlab conversion; `build` is `build_model`.
    """
    where: Path | Any = gf.path
    if line := unkept_warning(gf):
        if strict:
            raise WeightsError(line + "; pass keep_quantized=True to allow it")
        warnings.warn(line, stacklevel=4)
    try:
        # one thread, as `read_gguf` dequantizes: many small ops, each a parallel region that
        # stalls when another process holds a core
        with _torch_threads(1):
            add_row_probes(gf)
            cfg, sd = convert(gf)
            return build_quantized(gf, cfg, sd, build, dtype)
    except NotKept as e:
        msg = f"{where}: keep_quantized: {e}; this model's blocks cannot be kept quantized"
        if strict:
            raise WeightsError(msg + ": load it without keep_quantized") from None
        warnings.warn(msg + ", loading it in float32", stacklevel=4)
        return None
