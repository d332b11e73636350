"""Time to a target validation loss, read from a training run's ``metrics.jsonl``.

The Trainer (tinylm-dist) appends ``train`` records ``{step, loss, ..., elapsed}`` every ``log_interval``
steps and ``eval`` records ``{step, val_loss, ...}`` every ``eval_interval`` steps, the train record of a
step written before its eval. The time to reach ``target`` is the ``elapsed`` of the last train record at
or before the first eval whose ``val_loss <= target`` (exact when ``log_interval`` divides
``eval_interval``; an eval record carrying its own ``elapsed`` is used directly). ``elapsed`` is wall time
since the start of training: steps plus the evaluations, samples and checkpoints before that point,
excluding process start-up, data preparation and model building (like nanoGPT's per-iteration clock it
starts at the loop). Only the eval steps are known, so the step is an upper bound to within one
``eval_interval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinylm.core.bench.config import BENCH_MODES, BenchConfig
from tinylm.core.bench.results import BenchResult


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped); clear errors for a bad file."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (pass a run directory or its metrics.jsonl)")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i} is not JSON ({e.msg})") from None
    return records


def time_to_target(metrics_path: str | Path, target: float) -> dict[str, Any] | None:
    """``{step, elapsed_s, val_loss}`` of the first eval with ``val_loss <= target``; None if none."""
    records = read_jsonl(metrics_path)
    train_elapsed: list[tuple[int, float]] = [
        (r["step"], float(r["elapsed"])) for r in records if r.get("kind") == "train" and "elapsed" in r
    ]
    for r in records:
        if r.get("kind") != "eval" or r.get("val_loss") is None or r["val_loss"] > target:
            continue
        step = int(r["step"])
        if "elapsed" in r:
            elapsed: float | None = float(r["elapsed"])
        else:
            before = [e for s, e in train_elapsed if s <= step]
            elapsed = before[-1] if before else None
        return {"step": step, "elapsed_s": elapsed, "val_loss": float(r["val_loss"])}
    return None


@BENCH_MODES.register("time_to_target")
def bench_time_to_target(cfg: BenchConfig) -> BenchResult:
    """One row per training run in ``cfg.inputs``: when (step, seconds) it reached ``val_loss <= target``."""
    rows = []
    for path in cfg.inputs:
        records = read_jsonl(path)
        evals = [r for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
        hit = time_to_target(path, cfg.target)
        rows.append(
            {
                "run": str(path),
                "target": cfg.target,
                "reached": hit is not None,
                "step": hit["step"] if hit else None,
                "elapsed_s": hit["elapsed_s"] if hit else None,
                "val_loss": hit["val_loss"] if hit else None,
                "best_val_loss": min((r["val_loss"] for r in evals), default=None),
                "last_step": max((r.get("step", 0) for r in records), default=0),
            }
        )
    return BenchResult(
        mode="time_to_target",
        rows=rows,
        keys=["run"],
        units={"elapsed_s": "s"},
        notes=[
            f"first eval with val_loss <= {cfg.target}; elapsed = wall time since the training loop started "
            "(evals and checkpoints included), from the train record at that step"
        ],
        plot={"kind": "bar", "y": ["elapsed_s"], "series": ["run"]},
    )
