"""Timing on the device that does the work: CUDA events on CUDA, ``time.perf_counter`` elsewhere.

GPU work is asynchronous: a wall clock around a launch measures the launch, not the kernel. ``Stopwatch``
records a CUDA event before and after the region and waits for the second one, so it measures what the
GPU did (including any idle gaps while the host was launching); on CPU (and MPS, after a synchronize) it
is the wall clock. ``measure`` runs a callable ``warmup`` times untimed (compilation, allocator and cache
warm-up), then ``repeats`` times timed, and reports order statistics: the median is the headline number
because it ignores the occasional slow repeat (a page fault, another process, a clock change).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait until all queued work on ``device`` is done (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """``with Stopwatch(device) as sw: work()`` then ``sw.ms``: the region's duration in milliseconds."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.ms = math.nan
        self._start: Any = None

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            synchronize(self.device)
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            self.ms = self._start.elapsed_time(end)
        else:
            synchronize(self.device)
            self.ms = (time.perf_counter() - self._start) * 1e3


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class TimingStats:
    """Repeat timings in milliseconds and their summary statistics."""

    times_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p10(self) -> float:
        return percentile(self.times_ms, 10)

    @property
    def p90(self) -> float:
        return percentile(self.times_ms, 90)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times_ms)

    @property
    def min(self) -> float:
        return min(self.times_ms)

    def to_dict(self) -> dict[str, Any]:
        """``{median, p10, p90, mean, min, all}``, all in milliseconds."""
        return {
            "median": self.median,
            "p10": self.p10,
            "p90": self.p90,
            "mean": self.mean,
            "min": self.min,
            "all": list(self.times_ms),
        }


def measure(
    fn: Callable[[], Any], warmup: int = 3, repeats: int = 10, device: torch.device | str = "cpu"
) -> TimingStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed by a ``Stopwatch``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        with Stopwatch(device) as sw:
            fn()
        times.append(sw.ms)
    return TimingStats(times)
