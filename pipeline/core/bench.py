"""Measurement helpers shared by the benchmarks (``scripts/bench_*.py``): wall/CPU time of a callable, peak memory.

Speed targets are ratios measured side by side in one run, never timed assertions: other processes sharing the CPU
inflate and scatter every absolute number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["peak_extra_memory_mib", "timed"]


def timed(
    fn: Callable[[], object], *, repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """(median wall-clock seconds, median process CPU seconds) over ``repeats`` runs after ``warmup`` runs; ``sync``
    runs after each call (e.g. ``torch.cuda.synchronize``) so asynchronous work is counted.

    CPU time is the less contention-sensitive of the two when other processes share the cores (with 1 thread it is
    close to the work done; with more threads it includes OpenMP spin-waiting)."""
    for _ in range(warmup):
        fn()
        sync()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_memory_mib(fn: Callable[[], object]) -> float | None:
    """Peak resident memory above the level before ``fn`` (MiB), via Linux's resettable VmHWM; None if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
        before = _status_kib("VmRSS")
    except (OSError, RuntimeError):
        return None
    fn()
    return (_status_kib("VmHWM") - before) / 1024.0
