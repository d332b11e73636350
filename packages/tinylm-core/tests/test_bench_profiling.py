"""Profiling helpers: the device timeline (busy, idle, longest gaps) from a trace's kernel intervals."""

import json

import pytest
import torch

from tinylm.core.bench.profiling import device_timeline, format_timeline, kernel_intervals, profiled


def test_device_timeline_counts_overlaps_once_and_finds_the_gaps():
    kernels = [  # (start, end, name) out of order; b overlaps a; c is nested inside b
        (10.0, 14.0, "b"),
        (0.0, 5.0, "a"),
        (11.0, 12.0, "c"),
        (20.0, 21.5, "d"),
        (4.0, 10.0, "a2"),
        (30.0, 31.0, "e"),
    ]
    t = device_timeline(kernels, top=2)
    assert t["kernels"] == 6 and t["span_us"] == 31.0
    assert t["busy_us"] == pytest.approx(14.0 + 1.5 + 1.0)  # [0, 14] + [20, 21.5] + [30, 31]
    assert t["idle_us"] == pytest.approx(6.0 + 8.5) and t["gaps"] == 2
    assert t["longest"] == [(8.5, "d", "e"), (6.0, "b", "d")]  # "b" ends the first busy run
    text = format_timeline(t)
    assert "6 kernels over 31.0 us" in text and "8.50  d -> e" in text
    with pytest.raises(ValueError, match="at least one kernel"):
        device_timeline([])


def test_kernel_intervals_keeps_only_gpu_kernels_sorted():
    trace = {
        "traceEvents": [
            {"cat": "kernel", "name": "k2", "ts": 7, "dur": 2},
            {"cat": "cpu_op", "name": "aten::mm", "ts": 1, "dur": 30},
            {"cat": "kernel", "name": "k1", "ts": 3, "dur": 1.5},
            {"ph": "M", "name": "process_name"},
        ]
    }
    assert kernel_intervals(json.loads(json.dumps(trace))) == [(3.0, 4.5, "k1"), (7.0, 9.0, "k2")]
    assert kernel_intervals({}) == []


def test_profiled_on_cpu_writes_the_table_and_no_timeline(tmp_path):
    with profiled(True, "cpu", tmp_path, "mm") as info:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert (tmp_path / "mm_ops.txt").read_text().strip() and "timeline" not in info
    assert (tmp_path / "mm_trace.json").exists()
