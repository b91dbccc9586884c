"""Which optional CPU kernels lmlab can use here: each is probed once on a tiny input.

Some fast paths call private torch CPU ops whose support depends on the CPU and the torch build:
oneDNN's packed bf16 linear needs AVX-512 (bw, vl, dq) or AVX-NE-CONVERT and raises on an
AVX2-only CPU, although torch itself imports and runs fine there. CPU flags alone do not settle it
(oneDNN may be capped by `ONEDNN_MAX_CPU_ISA`, a build may lack MKL or fbgemm), so each kernel is
run once on a tiny input, checked against the plain computation, and used only if that works;
elsewhere the plain torch path runs (same results for packing, just slower).

Environment: `LMLAB_KERNELS=plain` turns every optional kernel off, e.g. to exercise the fallbacks
on a machine that has the kernels; `LMLAB_KERNELS=-native_gemv` (names, comma-separated, each with a
minus) turns those off, e.g. to run torch's int4 kernel where lmlab's own would be chosen (unset,
empty or `auto`: use what the probes allow). `available()` reads it at each call: packing decides
when a decoder builds `PackedWeights`, a quantized linear when built.
Run `lmlab doctor` to see what is used here.
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from lmlab.errors import InputError

ENV = "LMLAB_KERNELS"

# x86 features that decide which kernels run fast, as /proc/cpuinfo spells them.
FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx512_fp16",
    "avx_ne_convert",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# torch's own checks, used where there is no /proc/cpuinfo (its AVX-512 one needs f, bw, vl, dq).
TORCH_CHECKS = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512bw": "_is_avx512_supported",
    "avx512vl": "_is_avx512_supported",
    "avx512dq": "_is_avx512_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "avx512_vnni": "_is_vnni_supported",
    "amx_tile": "_is_amx_tile_supported",
}


@dataclass(frozen=True)
class Kernels:
    """For each optional kernel: whether lmlab uses it here."""

    packed_fp32: bool  # MKL float32 linear on a weight packed once (torch.ops.mkl._mkl_linear)
    packed_bf16: bool  # oneDNN bf16 linear on a weight packed once (torch.ops.mkldnn)
    int8_weight_only: bool  # fused int8-weight matmul (torch.ops.aten._weight_int8pack_mm)
    int4_weight_only: bool  # packed int4-weight matmul (aten._weight_int4pack_mm_for_cpu)
    int8_dynamic: bool  # fbgemm int8 x int8 matmul (torch.ops.quantized.linear_dynamic)
    native_gemv: bool  # lmlab's own AVX2 int4 / int8-weight float32 products (lmlab.native)


NAMES = tuple(f.name for f in fields(Kernels))
PLAIN = Kernels(**dict.fromkeys(NAMES, False))

# What each kernel does, and what runs instead where it is off.
USES = {
    "packed_fp32": "float32 linears packed once for MKL (batched decoding, GRPO rollouts)",
    "packed_bf16": "bf16 linears packed once for oneDNN (bf16 / autocast decoding, rollouts)",
    "int8_weight_only": "fused int8-weight matmul (quantize_int8 kind='int8')",
    "int4_weight_only": "packed int4-weight matmul (quantize kind='int4', GGUF keep_quantized)",
    "int8_dynamic": "fbgemm int8 matmul (quantize_int8 kind='int8-dynamic')",
    "native_gemv": "lmlab's AVX2 int4 / int8-weight products (decoding; every row count "
    "where torch's int4 / int8 kernels lack AVX-512)",
}
FALLBACKS = {
    "packed_fp32": "plain nn.Linear (same results, slower)",
    "packed_bf16": "plain nn.Linear (same results, slower)",
    "int8_weight_only": "dequantize and matmul (same quality, slower)",
    "int4_weight_only": "dequantize and matmul (same quality, slower)",
    "int8_dynamic": "none: quantize_int8(kind='int8-dynamic') raises; use kind='int8'",
    "native_gemv": "torch's packed int4 / int8 kernels (bfloat16; slow without AVX-512)",
}


def forced_off() -> tuple[str, ...]:
    """The kernels `LMLAB_KERNELS` turns off: all for `plain`, the named ones for `-a,-b`."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return ()
    if value == "plain":
        return NAMES
    names = [part.strip() for part in value.split(",")]
    wrong = [n for n in names if not n.startswith("-") or n[1:] not in NAMES]
    if wrong:
        raise InputError(
            f"{ENV}={value!r}: use 'plain' (no optional kernels), '-name,...' to turn kernels off "
            f"(names: {', '.join(NAMES)}), or 'auto' / unset"
        )
    return tuple(n[1:] for n in names)


def forced_plain() -> bool:
    """`LMLAB_KERNELS=plain` is set: every optional kernel is off."""
    return forced_off() == NAMES


def available() -> Kernels:
    """The kernels lmlab uses here: those whose probe passed and `LMLAB_KERNELS` leaves on."""
    off = forced_off()
    return replace(_probed(), **dict.fromkeys(off, False)) if off else _probed()


def reasons() -> dict[str, str]:
    """Kernel name -> why lmlab does not use it here ('' for those it uses)."""
    off, why = forced_off(), dict(probe()) if not forced_plain() else {}
    value = os.environ.get(ENV, "").strip()
    return {n: f"forced off by {ENV}={value}" if n in off else why[n] for n in NAMES}


@functools.cache
def _probed() -> Kernels:
    """`probe()` as flags."""
    return Kernels(**{name: not reason for name, reason in probe().items()})


@functools.cache
def probe() -> dict[str, str]:
    """Kernel name -> '' if it ran correctly on a tiny input, else why not (run once, cached)."""
    return {name: _run(check) for name, check in PROBES.items()}


def torch_batches_fast() -> bool:
    """Whether torch's int4 / int8 CPU kernels run their AVX-512 code here (bfloat16 dot products:
    faster than lmlab's AVX2 kernel on batches of rows; on AVX2 they are 10x slower)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def bf16_gemm_fast() -> bool:
    """Whether bfloat16 matrix products run on the CPU's own bf16 instructions (AVX512-BF16 or
    AMX): there a dequantized bf16 weight times a long prompt beats torch's int4 kernel 2x."""
    return torch_batches_fast() and bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def reset() -> None:
    """Forget the cached probes and CPU features (they run again on next use)."""
    probe.cache_clear()
    _probed.cache_clear()
    _features.cache_clear()
    cpu_model.cache_clear()


def cpu_features() -> list[str]:
    """The `FEATURES` this CPU has: from /proc/cpuinfo, else from torch's own checks."""
    return list(_features())


@functools.cache
def _features() -> tuple[str, ...]:
    flags = _cpuinfo("flags")
    if flags:
        have = set(flags.split())
        return tuple(f for f in FEATURES if f in have)
    checks = {f: getattr(torch.cpu, name, None) for f, name in TORCH_CHECKS.items()}
    return tuple(f for f, check in checks.items() if check is not None and check())


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else the platform's processor string)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def _cpuinfo(key: str) -> str:
    """The value of `key` for the first processor in /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


def _run(check: Callable[[], None]) -> str:
    """'' if `check` runs and passes, else its error in one line."""
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            check()
    except Exception as e:  # any failure means: do not use this kernel
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else 'failed'}"
    return ""


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded tiny input [3, 32], weight [16, 32] and bias [16] in `dtype`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, generator=g).to(dtype)
    w = torch.randn(16, 32, generator=g).to(dtype)
    b = torch.randn(16, generator=g).to(dtype)
    return x, w, b


def _expect(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    """Raise unless a kernel's result matches the plain computation's."""
    if got.shape != want.shape or not torch.allclose(got.float(), want.float(), atol=atol):
        raise ValueError("the kernel ran but its result differs from the plain computation")


def _packed_fp32() -> None:
    x, w, b = _inputs(torch.float32)
    packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 3)
    sizes = w.new_zeros(()).expand(w.shape)  # as lmlab.generate.packed calls it
    _expect(torch.ops.mkl._mkl_linear(x, packed, sizes, b, 3), x @ w.T + b, 1e-4)


def _packed_bf16() -> None:
    x, w, b = _inputs(torch.bfloat16)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
    got = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    _expect(got, x.float() @ w.float().T + b.float(), 0.25)


def _int8_weight_only() -> None:
    x, w, _ = _inputs(torch.bfloat16)
    q = torch.randint(-127, 128, w.shape, generator=torch.Generator().manual_seed(1))
    q, scale = q.to(torch.int8), torch.full((w.shape[0],), 0.01, dtype=torch.bfloat16)
    got = torch.ops.aten._weight_int8pack_mm(x, q, scale)
    _expect(got, (x.float() @ q.float().T) * 0.01, 0.25)


def _int4_weight_only() -> None:
    # w = (q - 8) * scale + zero per group of 32 input columns (torch's CPU int4 convention)
    x, _, _ = _inputs(torch.bfloat16)
    q = torch.randint(0, 16, (16, 32), generator=torch.Generator().manual_seed(1))
    sz = torch.tensor([0.01, 0.02], dtype=torch.bfloat16).expand(1, 16, 2).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz)
    _expect(got, x.float() @ ((q.float() - 8) * 0.01 + 0.02).T, 0.05)


def _int8_dynamic() -> None:
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError("torch has no fbgemm quantized engine (x86 CPU builds have it)")
    x, w, b = _inputs(torch.float32)
    scale = w.abs().amax(1) / 127
    q = (w / scale[:, None]).round().to(torch.int8)
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated (still works)
        warnings.simplefilter("ignore", UserWarning)
        zeros = torch.zeros(w.shape[0], dtype=torch.long)
        wq = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
    packed = torch.ops.quantized.linear_prepack(wq, b)
    got = torch.ops.quantized.linear_dynamic(x, packed, True)
    _expect(got, x @ (q.float() * scale[:, None]).T + b, 1.0)  # 7-bit inputs


def _native_gemv() -> None:
    from lmlab import native

    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"lmlab's C++ kernels are for x86-64 CPUs, not {platform.machine()}")
    missing = {"avx2", "fma"} - set(cpu_features())
    if missing:
        raise RuntimeError(f"this CPU lacks {', '.join(sorted(missing))}")
    native.load()
    x, _, _ = _inputs(torch.float32)
    q = torch.randint(0, 16, (16, 32), generator=torch.Generator().manual_seed(1))
    q[:, :2] = torch.tensor([0, 15])  # every row spans 0..15: quantizing w gives q back
    scale, zero = 2.0**-6, 2.0**-5  # exact in bfloat16
    sz = torch.tensor([scale, zero], dtype=torch.bfloat16).expand(16, 1, 2).contiguous()
    nibbles = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    got = torch.ops.lmlab_native.int4_linear(x, nibbles, sz, 32)
    w = (q.float() - 8) * scale + zero
    _expect(got, x @ w.T, 1e-4)
    _expect(torch.ops.lmlab_native.int4_dequantize(nibbles, sz, 32, torch.float32), w, 0.0)
    _expect(torch.ops.lmlab_native.int4_quantize(w, 32)[0], nibbles, 0.0)
    q8 = (q - 8).to(torch.int8)
    got = torch.ops.lmlab_native.int8_linear(x, q8, torch.full((16,), scale, dtype=torch.bfloat16))
    _expect(got, (x @ q8.float().T) * scale, 1e-4)


PROBES: dict[str, Callable[[], None]] = {
    "packed_fp32": _packed_fp32,
    "packed_bf16": _packed_bf16,
    "int8_weight_only": _int8_weight_only,
    "int4_weight_only": _int4_weight_only,
    "int8_dynamic": _int8_dynamic,
    "native_gemv": _native_gemv,
}
