"""``kernels`` mode: runs tinylm-kernels' own benchmark scripts and gathers their JSON into one result.

Every ``bench_*.py`` in ``kernels_dir`` (``packages/tinylm-kernels/benchmarks`` in the repository) is run
as ``python <script> --json <out> [kernels_args]`` in a subprocess, one at a time; its stdout shows live,
its stderr is kept for the error note. The JSON's rows (``{"rows": [...], ...}``) become rows here with a
``script`` column; its other top-level fields (device, copy bandwidth, ...) go to ``meta[script]``. The
scripts time GPU kernels, so without CUDA they are skipped with a note; a script that fails leaves a
note with the end of its stderr, and the others still run. The kernels' methodology (CUDA graphs, L2
flush, baselines) lives in those scripts' docstrings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from tinylm.core.bench.config import BENCH_MODES, BenchConfig, resolve_device
from tinylm.core.bench.results import BenchResult

# Units of the columns the kernel scripts write (a column's suffix names its unit).
KNOWN_UNITS = {
    "us": "us", "ms": "ms", "fwd_us": "us", "fwdbwd_us": "us", "fwd_gbps": "GB/s", "fwdbwd_gbps": "GB/s",
    "fwd_pct": "% of copy", "fwdbwd_pct": "% of copy",
}  # fmt: skip


def find_kernel_benchmarks(directory: str | Path) -> list[Path]:
    """The ``bench_*.py`` scripts in ``directory``, sorted; an error when the directory does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no kernel benchmarks directory at {directory}; "
            "set kernels_dir=<repo>/packages/tinylm-kernels/benchmarks"
        )
    return sorted(directory.glob("bench_*.py"))


def run_kernel_benchmark(script: Path, args: list[str], timeout: int) -> tuple[dict[str, Any] | None, str]:
    """``(json document or None, message)`` of one script run with ``--json``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        try:
            proc = subprocess.run(
                [sys.executable, str(script), "--json", str(out), *args],
                stderr=subprocess.PIPE, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return None, f"{script.name} ran over kernels_timeout={timeout}s and was stopped"
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            return None, f"{script.name} failed (exit {proc.returncode}): {tail[-400:]}"
        if not out.is_file():
            return None, f"{script.name} exited 0 but wrote no JSON to --json"
        try:
            return json.loads(out.read_text()), f"{script.name}: ok"
        except json.JSONDecodeError as e:
            return None, f"{script.name} wrote invalid JSON ({e.msg})"


@BENCH_MODES.register("kernels")
def bench_kernels(cfg: BenchConfig) -> BenchResult:
    """Run every tinylm-kernels benchmark script found in ``cfg.kernels_dir`` and collect its rows."""
    scripts = find_kernel_benchmarks(cfg.kernels_dir)
    device = resolve_device(cfg.device)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    meta: dict[str, Any] = {"scripts": [s.name for s in scripts]}
    if not scripts:
        notes.append(f"no bench_*.py scripts in {cfg.kernels_dir}")
    elif device.type != "cuda" or not torch.cuda.is_available():
        notes.append(
            f"skipped {', '.join(s.name for s in scripts)}: the tinylm-kernels benchmarks time GPU kernels "
            f"and need a CUDA device (this run is on {device})"
        )
    else:
        for script in scripts:
            print(f"running {script.name} ...", flush=True)
            doc, message = run_kernel_benchmark(script, cfg.kernels_args, cfg.kernels_timeout)
            notes.append(message)
            if doc is None:
                continue
            script_rows = doc.get("rows", []) if isinstance(doc, dict) else []
            rows += [{"script": script.stem, **r} for r in script_rows if isinstance(r, dict)]
            meta[script.stem] = {k: v for k, v in doc.items() if k != "rows"} if isinstance(doc, dict) else {}
    y = [c for c in ("fwd_us", "fwdbwd_us", "us", "ms") if any(c in r for r in rows)][:2]
    keys = [c for c in ("script", "dtype", "shape", "method") if any(c in r for r in rows)] or ["script"]
    units = {c: u for c, u in KNOWN_UNITS.items() if any(c in r for r in rows)}
    return BenchResult(
        mode="kernels",
        rows=rows,
        keys=keys,
        units=units,
        notes=notes,
        meta=meta,
        plot={"kind": "bar", "y": y, "series": keys, "logy": True} if y else None,
    )
