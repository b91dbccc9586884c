"""Training-state checkpoints: model, optimizer, schedule, every RNG, data position, step, configs.

A run folder keeps its last K checkpoints as step-numbered files (`ckpt_000300.pt`) listed, with
their size and sha256, in a manifest (`checkpoints.json`). Each file is written to a temporary,
fsynced and renamed into place before the manifest names it, and the manifest itself is replaced
atomically, so a kill at any moment leaves the previous complete set. Resuming takes the newest
file whose checksum matches and falls back to an older one, saying so on stderr. Folders from
before the manifest (a single `ckpt.pt`) still load. Loaded with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.config import ConfigError
from lmlab.errors import CheckpointError
from lmlab.runs import atomic_write, fsync_dir, tmp_name

PREFIX = (
    "ckpt"  # training checkpoints (every trainer, GRPO included): ckpt_NNNNNN.pt, checkpoints.json
)
# temporaries of a killed writer: `.lmlab-tmp-<pid>-<name>` (lmlab.runs) or the older `.<name>.tmp<pid>`
_TMP = re.compile(r"\.lmlab-tmp-\d+-(?P<a>.+)|\.(?P<b>.+)\.tmp\d+")


@dataclass
class Entry:
    """One checkpoint file of a run folder, with what the manifest recorded about it."""

    path: Path
    step: int | None = None
    sha256: str | None = None  # None: written before manifests (only a load can check it)
    size: int | None = None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states in a form `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- single files
def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` to `path` (tmp file + fsync + rename + directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save` (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- run folders
def manifest_name(prefix: str = PREFIX) -> str:
    """The manifest of a prefix: `checkpoints.json` for "ckpt"."""
    return f"{prefix.removesuffix('ckpt')}checkpoints.json"


def step_name(step: int, prefix: str = PREFIX) -> str:
    """The file name of the checkpoint at `step`: `ckpt_000300.pt`."""
    return f"{prefix}_{step:06d}.pt"


def _step_files(run_dir: Path, prefix: str) -> list[Path]:
    """`PREFIX_<digits>.pt` files of `run_dir`, oldest step first."""
    pattern = re.compile(re.escape(prefix) + r"_(\d+)\.pt")
    found = [(int(m.group(1)), p) for p in run_dir.glob(f"{prefix}_*.pt")
             if (m := pattern.fullmatch(p.name))]  # fmt: skip
    return [p for _, p in sorted(found)]


def _read_manifest(run_dir: Path, prefix: str) -> list[Entry]:
    """The manifest's entries, oldest first; `CheckpointError` if it is damaged."""
    path = run_dir / manifest_name(prefix)
    try:
        recs = json.loads(path.read_text())["checkpoints"]
        return [
            Entry(run_dir / Path(r["file"]).name, int(r["step"]), str(r["sha256"]), int(r["size"]))
            for r in recs
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e})") from None


def candidates(run_dir: str | Path, prefix: str = PREFIX) -> list[Entry]:
    """The checkpoints of `run_dir`, newest first: the manifest's, else step files, else `ckpt.pt`."""
    run_dir = Path(run_dir)
    if (run_dir / manifest_name(prefix)).is_file():
        try:
            return _read_manifest(run_dir, prefix)[::-1]
        except CheckpointError as e:
            print(
                f"warning: {e}; trying the {prefix}_*.pt files without checksums", file=sys.stderr
            )
    found = [Entry(p) for p in _step_files(run_dir, prefix)[::-1]]
    legacy = run_dir / f"{prefix}.pt"
    return [*found, Entry(legacy)] if legacy.is_file() else found


def exists(run_dir: str | Path, prefix: str = PREFIX) -> bool:
    """Whether `run_dir` holds any checkpoint (good or damaged) or a checkpoint manifest."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and (
        (run_dir / manifest_name(prefix)).is_file()
        or (run_dir / f"{prefix}.pt").is_file()
        or bool(_step_files(run_dir, prefix))
    )


def problem(entry: Entry) -> str | None:
    """Why `entry` cannot be used (missing, empty, truncated, checksum mismatch), or None."""
    p = entry.path
    if not p.is_file():
        return "missing"
    size = p.stat().st_size
    if size == 0:
        return "empty"
    if entry.sha256 is None:  # no recorded checksum: check the zip records' CRC32s instead
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return "truncated or not a checkpoint"
        return None if bad is None else f"damaged (record {bad})"
    if entry.size is not None and size != entry.size:
        return f"truncated or changed ({size} bytes, {entry.size} written)"
    if sha256(p) != entry.sha256:
        return "damaged (sha256 differs from the one recorded when it was written)"
    return None


def _describe(entry: Entry) -> str:
    return f"{entry.path}" + (f" (step {entry.step})" if entry.step is not None else "")


def _none_left(run_dir: Path, bad: list[tuple[Entry, str]]) -> CheckpointError:
    if not bad:
        return CheckpointError(
            f"no checkpoint in {run_dir}; check --out_dir, or drop --resume to start a new run"
        )
    listed = "; ".join(f"{e.path.name} is {why}" for e, why in bad)
    return CheckpointError(
        f"no usable checkpoint in {run_dir}: {listed}. Restore a good copy of one of them, or "
        "start over: drop --resume and use a new out_dir"
    )


def _warn_fallback(bad: list[tuple[Entry, str]], good: Entry, doing: str) -> None:
    if bad:
        listed = "; ".join(f"{e.path} is {why}" for e, why in bad)
        print(f"warning: {listed}; {doing} the previous checkpoint {_describe(good)}",
              file=sys.stderr)  # fmt: skip


def latest(run_dir: str | Path, prefix: str = PREFIX, warn: bool = True) -> Path:
    """The newest checkpoint of `run_dir` that passes its checksum (older ones if the newest
    is damaged, with a warning on stderr); `CheckpointError` naming the files when none does."""
    run_dir, bad = Path(run_dir), []
    for entry in candidates(run_dir, prefix):
        why = problem(entry)
        if why is None:
            _warn_fallback(bad if warn else [], entry, "using")
            return entry.path
        bad.append((entry, why))
    raise _none_left(run_dir, bad)


def load_latest(
    run_dir: str | Path, prefix: str = PREFIX, warn: bool = True
) -> tuple[Path, dict[str, Any]]:
    """`latest` that also loads it, falling back further if a checksum-clean file fails to load."""
    run_dir, bad = Path(run_dir), []
    for entry in candidates(run_dir, prefix):
        why = problem(entry)
        if why is None:
            try:
                state = load(entry.path)
            except Exception as e:  # torch raises many types for damaged files
                why = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            else:
                _warn_fallback(bad if warn else [], entry, "resuming from")
                return entry.path, state
        bad.append((entry, why))
    raise _none_left(run_dir, bad)


def save_step(
    run_dir: str | Path, state: dict[str, Any], step: int, keep: int = 2, prefix: str = PREFIX
) -> Path:
    """Write the checkpoint of `step`, record its sha256 in the manifest, keep the newest `keep`.

    Entries at `step` or later (a future abandoned by resuming from an older checkpoint) are
    replaced. Files not in the new manifest are deleted only after it is in place."""
    run_dir = Path(run_dir)
    path = save(run_dir / step_name(step, prefix), state)
    new = Entry(path, step, sha256(path), path.stat().st_size)
    try:
        old = _read_manifest(run_dir, prefix) if (run_dir / manifest_name(prefix)).is_file() else []
    except CheckpointError:
        old = []
    kept = (
        [e for e in old if e.step is not None and e.step < step][-(keep - 1) :] if keep > 1 else []
    )
    kept.append(new)
    recs = [{"file": e.path.name, "step": e.step, "sha256": e.sha256, "size": e.size} for e in kept]
    atomic_write(
        run_dir / manifest_name(prefix), json.dumps({"checkpoints": recs}, indent=1) + "\n"
    )
    fsync_dir(run_dir)
    names = {e.path.name for e in kept}
    for p in _step_files(run_dir, prefix):
        if p.name not in names:
            p.unlink(missing_ok=True)
    return path


def clean_tmp(folder: str | Path, prefix: str = PREFIX) -> None:
    """Remove temporary checkpoint and manifest files a killed writer left (never a complete one)."""
    ours = re.compile(re.escape(prefix) + r"(_\d+)?\.pt|" + re.escape(manifest_name(prefix)))
    for p in Path(folder).glob(".*"):
        m = _TMP.fullmatch(p.name)
        if m and ours.fullmatch(m.group("a") or m.group("b")) and p.is_file():
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------- resume checks
def check_model_config(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Raise `ConfigError` listing every model field that differs between a checkpoint and this run."""
    diff = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k != "extra" and saved.get(k) != current.get(k)
    ]
    if diff:
        raise ConfigError(
            f"cannot resume from {path}: the model config differs ({'; '.join(diff)}). "
            "Use the same model settings as the checkpoint, or a new out_dir to start over"
        )


def check_settings(changed: list[tuple[str, Any, Any]], path: str | Path) -> None:
    """Raise `CheckpointError` naming each (setting, checkpoint value, new value) in `changed`."""
    if changed:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed)
        names = ",".join(k for k, _, _ in changed)
        raise CheckpointError(
            f"cannot resume from {path}: settings differ from the checkpoint's ({listed}); resume "
            f"with the checkpoint's values, pass --allow-change {names} to continue with the new "
            "ones, or use a new out_dir"
        )
