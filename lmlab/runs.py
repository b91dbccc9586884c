"""Run folders: `runs/<name>/<timestamp>/` with config.toml, metrics.json, plots and report.md."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.settings import to_toml


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunDir:
    """The folder a recipe or training run writes into."""

    path: Path

    @classmethod
    def create(cls, name: str, root: str | Path = "runs") -> RunDir:
        """A new timestamped folder `root/name/YYYYmmdd-HHMMSS`."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / name / stamp
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / name / f"{stamp}-{n}"
        path.mkdir(parents=True)
        return cls(path)

    def file(self, name: str) -> Path:
        """Path of a file inside the run folder."""
        return self.path / name

    def write_config(self, cfg: Any) -> None:
        atomic_write(self.file("config.toml"), to_toml(cfg))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write(self.file("metrics.json"), json.dumps(metrics, indent=2, default=float) + "\n")

    def write_report(self, text: str) -> None:
        atomic_write(self.file("report.md"), text.rstrip() + "\n")
