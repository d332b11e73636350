"""Training metrics: a JSONL log, a loss-curve PNG and a printable run summary.

``metrics.jsonl`` holds one JSON object per line, each with a ``kind``:
``train`` {step, loss, lr, grad_norm, tokens_per_s, elapsed}, ``eval`` {step, val_loss, val_ppl} and
``samples`` {step, samples: [{prompt, text}]}. The plot is drawn on a bare Agg canvas (no pyplot), so it
neither needs a display nor changes the matplotlib backend of the program that imported us.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends records to a JSONL file, one line each, flushed at once (a killed run loses nothing).

    ``keep_until_step``: on resume, records after that step (written by the run that died after its last
    checkpoint) are dropped, so the file reads as one continuous run. Without it the file starts empty.
    """

    def __init__(self, path: str | Path, keep_until_step: int | None = None, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append ``{"kind": kind, **fields}``; returns the record."""
        record = {"kind": kind, **fields}
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file, optionally only those of one ``kind``."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def plot_loss_curve(records: Iterable[dict[str, Any]], path: str | Path, title: str = "loss") -> Path:
    """Save train loss (line) and val loss (markers) against step as a PNG; returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = list(records)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """A few human lines from the dict that ``Trainer.fit`` returns."""
    best = summary.get("best_val_loss")
    lines = [
        f"parameters      {summary['params']:,}",
        f"steps           {summary['steps']:,}",
        f"tokens seen     {summary['tokens_seen']:,}",
        f"final loss      {_fmt(summary.get('final_train_loss'))}",
        f"best val loss   {_fmt(best)}" + (f" (ppl {math.exp(best):.2f})" if best is not None else ""),
        f"wall time       {summary['wall_time_s']:.1f} s",
        f"checkpoint      {summary['checkpoint']}",
    ]
    if summary.get("best_checkpoint"):
        lines.append(f"best checkpoint {summary['best_checkpoint']}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
