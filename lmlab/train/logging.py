"""Metrics as JSONL plus TensorBoard events, a tqdm bar with loss, tokens/s, MFU and ETA."""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lmlab.config import Config

_GPU_PEAK = {  # dense bf16 / fp32 (non-tensor-core) FLOP/s from vendor sheets
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L4": (121e12, 30e12),
    "A10": (125e12, 31e12),
    "4090": (165e12, 83e12),
    "3090": (71e12, 36e12),
    "V100": (125e12, 15.7e12),
}


def flops_per_token(cfg: Config, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L d T for attention (PaLM appendix B)."""
    active = n_params
    if cfg.n_experts:  # only top_k of n_experts expert MLPs run per token
        mats = 3 if cfg.gated else 2
        active -= cfg.n_layers * (cfg.n_experts - cfg.top_k) * mats * cfg.d_model * cfg.d_ff
    return 6 * active + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


def peak_flops(device: torch.device, dtype: str) -> float:
    """Peak FLOP/s of one device: GPU from a table, CPU from cores x clock x SIMD width (an estimate)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32) in _GPU_PEAK.items():
            if key in name:
                return bf16 if dtype == "bfloat16" else fp32
        return 0.0
    try:
        info = Path("/proc/cpuinfo").read_text()
        mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", info).group(1))
        # fp32 FMA lanes x 2 units x 2
        per_cycle = 64 if "avx512f" in info else 32 if "avx2" in info else 8
    except (OSError, AttributeError):
        return 0.0
    return torch.get_num_threads() * mhz * 1e6 * per_cycle


TB_MISSING = (
    "TensorBoard events skipped: the `tensorboard` package is not installed "
    "(pip install 'lmlab[tensorboard]'); metrics.jsonl is still written"
)
_said_missing = False


def _summary_writer() -> Any:
    """torch's `SummaryWriter` class, or None (saying so once) when `tensorboard` is absent."""
    global _said_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _said_missing:
            print(TB_MISSING, file=sys.stderr)
            _said_missing = True
        return None
    return SummaryWriter


class MetricsLog:
    """Writes `metrics.jsonl` (and TensorBoard events under `tb/`) in `out_dir` on the main rank."""

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        start_step: int = 0,
    ):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step and self.path.is_file():  # resuming: drop records newer than the checkpoint
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= start_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif not start_step:
            self.path.write_text("")
        if tensorboard:
            writer = _summary_writer()
            if writer is not None:
                self.tb = writer(
                    str(Path(out_dir) / "tb"), purge_step=start_step + 1 if start_step else None
                )

    def write(self, *records: Mapping[str, Any]) -> None:
        """Append `records` (one JSON line each, synced once); numbers become TensorBoard
        scalars at the record's `step`, tagged `phase/key` when the record has a `phase`."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r, default=str) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for record in records:
                phase = record.get("phase")
                for k, v in record.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(f"{phase}/{k}" if phase else k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def scalars(metrics: Mapping[str, Any], prefix: str = "", limit: int = 1000) -> dict[str, float]:
    """The finite numbers of a nested metrics dict, keyed `a/b/0/c`, at most `limit` of them;
    `history` lists (logged as steps) and `config` settings are skipped."""
    out: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, numbers.Real) and math.isfinite(value):
            out[key] = float(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if k not in ("history", "config"):
                    walk(v, f"{key}/{k}" if key else str(k))
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}" if key else str(i))

    walk(metrics, prefix)
    return out


def log_run(
    out_dir: str | Path,
    metrics: Mapping[str, Any],
    histories: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Path:
    """Write a finished run's numbers to `out_dir/metrics.jsonl` and TensorBoard events (`tb/`).

    `histories` maps a phase name (the TensorBoard tag prefix) to step records such as a
    `Trainer`'s history; `metrics` (the headline numbers, nested dicts allowed) go in as phase
    `final` at the last step. Returns the JSONL path.
    """
    records = [
        {"phase": phase, **rec}
        for phase, recs in (histories or {}).items()
        for rec in recs
        if "step" in rec
    ]
    last = max((int(r["step"]) for r in records), default=0)
    log = MetricsLog(out_dir)
    try:
        log.write(*records, {"step": last, "phase": "final", **scalars(metrics)})
    finally:
        log.close()
    return log.path


class Progress:
    """tqdm bar over steps showing loss, tokens/s and MFU; tqdm itself shows the ETA.

    Lines passed to `write` print only when `main` (rank 0 under torchrun)."""

    def __init__(
        self, total: int, initial: int, enabled: bool, desc: str = "train", main: bool = True
    ) -> None:
        self.main = main
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
        )

    def update(
        self,
        n: int,
        loss: float | None = None,
        tok_s: float | None = None,
        mfu: float | None = None,
        **extra: float,
    ) -> None:
        if loss is not None:
            parts = [f"loss {loss:.4f}"]
            if tok_s:
                parts.append(f"{tok_s:,.0f} tok/s")
            if mfu:
                parts.append(f"mfu {100 * mfu:.1f}%")
            parts += [f"{k} {v:.4g}" for k, v in extra.items()]
            self.bar.set_postfix_str(" | ".join(parts), refresh=False)
        self.bar.update(n)

    def write(self, text: str) -> None:
        if self.main:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
