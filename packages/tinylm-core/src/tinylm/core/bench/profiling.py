"""``profile=true``: torch.profiler around a benchmark's timed region, a Chrome trace and a top-ops table.

Open ``<name>_trace.json`` in https://ui.perfetto.dev or chrome://tracing. The table (also saved as
``<name>_ops.txt``) lists the 15 ops with the most self time on the device doing the work (CUDA when the
run is on a GPU, else CPU). On a GPU, ``<name>_timeline.txt`` (``device_timeline``) adds where the
device sat idle: the kernels' busy time against the span from the first kernel's start to the last one's
end, and the longest gaps between consecutive kernels with the kernels on each side (a decode step that
is slower than its kernels' sum spends the difference there). Profiling slows the profiled region, so
timings of a profiled run carry a note saying so: measure without ``profile`` for the numbers you report.
"""

from __future__ import annotations

import contextlib
import json
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
    if cuda:
        kernels = kernel_intervals(json.loads(trace.read_text()))
        if kernels:
            summary = format_timeline(device_timeline(kernels))
            timeline = out / f"{name}_timeline.txt"
            timeline.write_text(summary + "\n")
            print(summary, flush=True)
            info["timeline"] = str(timeline)


def kernel_intervals(trace: dict[str, Any]) -> list[tuple[float, float, str]]:
    """``(start_us, end_us, name)`` of every GPU kernel in a Chrome trace (``"cat": "kernel"``), by start."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else []
    out = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), str(e.get("name", "?")))
           for e in events if e.get("cat") == "kernel" and "ts" in e]  # fmt: skip
    return sorted(out)


def device_timeline(kernels: list[tuple[float, float, str]], top: int = 8) -> dict[str, Any]:
    """Busy and idle time of one device stream from its kernel intervals (overlaps counted once).

    Returns ``kernels`` (count), ``span_us`` (first start to last end), ``busy_us`` (union of the
    intervals), ``idle_us``, ``gaps`` (count of idle stretches), ``mean_gap_us`` and ``longest``: the
    ``top`` longest gaps as ``(gap_us, kernel before, kernel after)``.
    """
    if not kernels:
        raise ValueError("device_timeline needs at least one kernel interval")
    kernels = sorted(kernels)
    busy, gaps = 0.0, []
    cur_start, cur_end, cur_name = kernels[0]
    for start, end, name in kernels[1:]:
        if start > cur_end:  # an idle stretch between the busy run so far and this kernel
            busy += cur_end - cur_start
            gaps.append((start - cur_end, cur_name, name))
            cur_start, cur_end, cur_name = start, end, name
        elif end > cur_end:
            cur_end, cur_name = end, name
    busy += cur_end - cur_start
    span = max(e for _, e, _ in kernels) - kernels[0][0]
    idle = sum(g for g, _, _ in gaps)
    return {
        "kernels": len(kernels),
        "span_us": span,
        "busy_us": busy,
        "idle_us": idle,
        "gaps": len(gaps),
        "mean_gap_us": idle / len(gaps) if gaps else 0.0,
        "longest": sorted(gaps, key=lambda g: -g[0])[:top],
    }


def format_timeline(t: dict[str, Any]) -> str:
    """``device_timeline``'s result as a few lines of text."""
    share = t["busy_us"] / t["span_us"] if t["span_us"] > 0 else 1.0
    lines = [
        f"device timeline: {t['kernels']} kernels over {t['span_us']:.1f} us; busy {t['busy_us']:.1f} us "
        f"({share:.0%}), idle {t['idle_us']:.1f} us in {t['gaps']} gaps (mean {t['mean_gap_us']:.2f} us)",
        "longest gaps (us, kernel before -> kernel after):",
    ]
    lines += [f"  {g:8.2f}  {a[:60]} -> {b[:60]}" for g, a, b in t["longest"]]
    return "\n".join(lines)


PROFILE_NOTE = (
    "profiled run: torch.profiler slows the timed region; rerun without profile=true to report numbers"
)
