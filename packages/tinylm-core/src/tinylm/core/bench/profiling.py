"""``profile=true``: torch.profiler around a benchmark's timed region, a Chrome trace and a top-ops table.

Open ``<name>_trace.json`` in https://ui.perfetto.dev or chrome://tracing. The table (also saved as
``<name>_ops.txt``) lists the 15 ops with the most self time on the device doing the work (CUDA when the
run is on a GPU, else CPU). Profiling slows the profiled region, so timings of a profiled run carry a
note saying so: measure without ``profile`` for the numbers you report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


@contextlib.contextmanager
def profiled(
    enabled: bool, device: torch.device | str, out_dir: str | Path, name: str, row_limit: int = 15
) -> Iterator[dict[str, Any]]:
    """Profile the ``with`` body when ``enabled``; the yielded dict gets ``trace`` and ``ops_table`` paths."""
    info: dict[str, Any] = {}
    if not enabled:
        yield info
        return
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        yield info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trace, ops = out / f"{name}_trace.json", out / f"{name}_ops.txt"
    prof.export_chrome_trace(str(trace))
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)
    ops.write_text(table + "\n")
    print(f"top {row_limit} ops by {sort_by} ({name}):\n{table}", flush=True)
    info.update(trace=str(trace), ops_table=str(ops), sort_by=sort_by)


PROFILE_NOTE = (
    "profiled run: torch.profiler slows the timed region; rerun without profile=true to report numbers"
)
