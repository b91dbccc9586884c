"""Read only the metadata of a GGUF file (header + key/value section), fast, as plain Python values."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.tokenizers.base import TokenizerError

# GGUF value types (ggml docs/gguf.md): id -> numpy dtype for fixed-size scalars.
_NUMPY = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_BOOL, _STRING, _ARRAY = 7, 8, 9


class _Cursor:
    """Sequential little-endian reads from a buffer, with a clear error past its end."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> int:
        start = self.pos
        if start + n > len(self.buf):
            raise TokenizerError(
                f"{self.path} ends inside its GGUF metadata (needs byte {start + n}, file has {len(self.buf)}); "
                "the file is truncated or corrupt: download it again"
            )
        self.pos += n
        return start

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.u32(), self.u64()
            if etype == _STRING:
                return [self.string() for _ in range(count)]
            if etype == _ARRAY:
                return [self.value(_ARRAY) for _ in range(count)]
            dt = np.dtype(self._dtype(etype))
            start = self.take(dt.itemsize * count)
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=start)
            return arr.astype(bool).tolist() if etype == _BOOL else arr.tolist()
        dt = np.dtype(self._dtype(vtype))
        v = np.frombuffer(self.buf, dtype=dt, count=1, offset=self.take(dt.itemsize))[0].item()
        return bool(v) if vtype == _BOOL else v

    def _dtype(self, vtype: int) -> str:
        if vtype not in _NUMPY:
            raise TokenizerError(
                f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}; the file is corrupt"
            )
        return _NUMPY[vtype]


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """All `key -> value` metadata of a GGUF file (strings, numbers, bools, lists), skipping tensors."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"GGUF file {path} not found; check the path")
    if path.stat().st_size == 0:
        raise TokenizerError(f"{path} is empty; the download failed: download it again")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        view = memoryview(buf)
        try:
            return _parse(_Cursor(view, path), path)
        finally:
            view.release()  # the mmap cannot close while a view of it is alive


def _parse(cur: _Cursor, path: Path) -> dict[str, Any]:
    start = cur.take(4)
    if bytes(cur.buf[start : start + 4]) != b"GGUF":
        raise TokenizerError(
            f"{path} is not a GGUF file (no 'GGUF' magic); pass a .gguf file from llama.cpp"
        )
    version = cur.u32()
    if version not in (2, 3):
        raise TokenizerError(f"{path}: GGUF version {version} is not supported (2 or 3 are)")
    cur.u64()  # tensor count
    n_kv = cur.u64()
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.u32())
    meta["GGUF.version"] = version
    return meta
