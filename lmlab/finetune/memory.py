"""Peak resident memory of a stretch of code on CPU (Linux: reset and read the process high-water mark)."""

from __future__ import annotations

import gc
import resource
from pathlib import Path


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """`with PeakMemory() as pm: ...`, then `pm.peak_mb` (peak RSS) and `pm.extra_mb` (peak - start).

    On Linux the high-water mark is reset on entry (`/proc/self/clear_refs`), so the peak belongs
    to the block; elsewhere it is the process peak so far (`ru_maxrss`), an upper bound.
    """

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.exact = True
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.exact = False
        self.start_kb = _status_kb("VmRSS") or 0
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kb("VmHWM") if self.exact else None
        self.peak_kb = (
            hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    @property
    def extra_mb(self) -> float:
        return max(0, self.peak_kb - self.start_kb) / 1024
