"""lmlab's own C++ CPU kernels (`quantized_gemv.cpp`): built once with the system's C++ compiler.

torch's packed int4 / int8 CPU kernels are fast only with AVX-512; on an AVX2-only CPU they take a
path 10x slower. `quantized_gemv.cpp` multiplies float32 inputs by int4 / int8 weights with AVX2 and
FMA (any x86 CPU of the last decade) and registers `torch.ops.lmlab_native.int4_linear` and
`int8_linear`, which `torch.compile` calls as they are, plus `int4_quantize` (float32 weights to
`Int4Linear`'s codes and scales, exactly as `lmlab.quantized.int4_params`, 3.5x faster) and
`int4_dequantize` (to float32, or bfloat16 for a long prompt's GEMM). `load()` compiles it on
first use (about 5 s, `$CXX` or g++) into `<cache>/native/<key>/` (key: the source, torch, the
flags) and loads it; where there is no compiler or no AVX2 it raises, and `lmlab.kernels` falls
back to torch's kernels. `make setup` builds it (`python -m lmlab.native`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

from lmlab.paths import cache_dir

SOURCE = Path(__file__).with_name("quantized_gemv.cpp")
FLAGS = ("-O3", "-mavx2", "-mfma", "-std=c++20", "-fPIC", "-shared", "-fopenmp")


def compiler() -> str:
    """The C++ compiler to build with: `$CXX`, else g++ / c++ on the PATH."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return name
    raise RuntimeError("no C++ compiler found (set CXX, or install g++: apt install g++)")


def library_path() -> Path:
    """Where the built library lives for this source, torch and compiler flags."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(FLAGS).encode()):
        key.update(part)
    return cache_dir() / "native" / key.hexdigest()[:16] / "lmlab_native.so"


def build(out: Path) -> None:
    """Compile `SOURCE` into `out` (written under a temporary name, then moved into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    libs = [a for p in cpp_extension.library_paths() for a in (f"-L{p}", f"-Wl,-rpath,{p}")]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        cmd = [compiler(), *FLAGS, abi, *includes, str(SOURCE), *libs, "-lc10", "-ltorch_cpu"]
        done = subprocess.run([*cmd, "-o", str(part)], capture_output=True, text=True)
        if done.returncode:
            lines = (done.stderr or done.stdout).strip().splitlines()
            error = next((line for line in lines if "error" in line), lines[-1] if lines else "")
            raise RuntimeError(f"building {SOURCE.name} failed: {error}")
        os.replace(part, out)


@functools.cache
def load() -> Path:
    """Build (once) and load the kernels; raise RuntimeError saying why they cannot be (the caller,
    `lmlab.kernels`, checks first that the CPU is x86-64 with AVX2 and FMA)."""
    path = library_path()
    if not path.exists():
        print(f"lmlab: building its CPU kernels once into {path.parent}", file=sys.stderr)
        build(path)
    torch.ops.load_library(str(path))
    _register_fakes()
    return path


def _register_fakes() -> None:
    """Shapes for `torch.compile`: the products return float32 [rows of x, rows of qweight]."""

    def fake(x: torch.Tensor, qweight: torch.Tensor, *_: object) -> torch.Tensor:
        return x.new_empty(x.shape[0], qweight.shape[0])

    def dequantize(q: torch.Tensor, sz: torch.Tensor, gs: int, dtype: torch.dtype) -> torch.Tensor:
        return q.new_empty(q.shape[0], 2 * q.shape[1], dtype=dtype)

    def quantize(w: torch.Tensor, gs: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = w.shape
        sz = w.new_empty(n, k // gs, 2, dtype=torch.bfloat16)
        return w.new_empty(n, k // 2, dtype=torch.uint8), sz

    for name in ("int4_linear", "int8_linear"):
        torch.library.register_fake(f"lmlab_native::{name}", fake)
    torch.library.register_fake("lmlab_native::int4_dequantize", dequantize)
    torch.library.register_fake("lmlab_native::int4_quantize", quantize)
