"""Check that a run folder holds metrics.jsonl and TensorBoard events that TensorBoard reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def read_events(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files under `folder/tb` as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(folder) / "tb"))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def assert_run_events(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """`folder` has metrics.jsonl records ending in the `final` one and, when the `tensorboard`
    extra is installed, an event file with at least one scalar; returns the scalars by tag."""
    folder = Path(folder)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[-1])["phase"] == "final"
    if not HAVE_TENSORBOARD:  # the JSONL is the record; lmlab said once that events were skipped
        return _jsonl_scalars(lines)
    assert list((folder / "tb").glob("events.out.tfevents.*")), f"no event file in {folder}/tb"
    scalars = read_events(folder)
    assert scalars, f"no scalars in the events of {folder}"
    return scalars


def _jsonl_scalars(lines: list[str]) -> dict[str, list[tuple[int, float]]]:
    """The JSONL records' numbers by the tags TensorBoard would show (`phase/key`)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in map(json.loads, lines):
        for k, v in rec.items():
            if k != "step" and isinstance(v, int | float):
                tag = f"{rec['phase']}/{k}" if rec.get("phase") else k
                out.setdefault(tag, []).append((rec["step"], v))
    return out
