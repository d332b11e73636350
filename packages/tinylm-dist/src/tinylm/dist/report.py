"""Experiment reports: one ``run.json`` per training run, and a sweep's runs as a markdown table + a PNG.

A run (``apps/train.py``) ends with ``finish_run``: it adds what a comparison needs to the Trainer's summary
(task accuracy on fresh documents when the data is a synthetic task, routing statistics, median tokens/s,
peak CUDA memory) and writes ``<run dir>/run.json``. ``write_report(sweep_dir)`` collects every
``run.json`` below a directory (a Hydra multirun) into ``report.md`` (params, tokens/s, final train loss,
best val loss, accuracy, peak memory) and ``report.png`` (val loss curves and accuracies). A Hydra
multirun calls it at the end through ``ReportCallback`` (duck-typed: this package never imports Hydra);
``python -m tinylm.dist.report <sweep dir>`` reruns it.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tinylm.core.components.routing import routing_stats
from tinylm.core.data import TASKS, evaluate_task
from tinylm.dist.metrics import read_metrics

RUN_FILE = "run.json"
COLUMNS = (
    "run",
    "params",
    "tokens/s",
    "final train loss",
    "best val loss",
    "accuracy",
    "exact match",
    "peak mem",
)


def finish_run(
    summary: dict[str, Any],
    model: torch.nn.Module,
    tokenizer: Any,
    data_name: str,
    out_dir: str | Path,
    overrides: Sequence[str],
    eval_examples: int = 256,
    sample: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The summary plus task accuracy, routing stats, tokens/s and peak memory, written to ``run.json``.

    ``sample``: a ``(B, T)`` batch of input ids; a forward on it (no gradients) fills the routers' statistics
    (expert utilisation, fraction of tokens processed): in training mode as ``routing``, in eval mode (how
    the model generates) as ``routing_eval``.
    """
    out_dir = Path(out_dir)
    run = {
        "label": ",".join(overrides) or "default",
        "overrides": list(overrides),
        "data": data_name,
        **summary,
    }
    metrics = Path(summary.get("metrics") or out_dir / "metrics.jsonl")
    speeds = [r["tokens_per_s"] for r in read_metrics(metrics, "train")] if metrics.exists() else []
    run["tokens_per_s"] = statistics.median(speeds[1:] or speeds) if speeds else None  # first has warm-up
    if data_name in TASKS:
        run["task"] = evaluate_task(model, tokenizer, data_name, num_examples=eval_examples)
    device = next(model.parameters()).device
    if sample is not None:  # training mode (mod: top-k) and eval mode (mod: the causal predictor)
        for key, training in (("routing", True), ("routing_eval", False)):
            model.train(training)
            with torch.no_grad():
                model(sample.to(device))
            run[key] = routing_stats(model)
        model.train()
    run["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    return run


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``run.json`` below ``sweep_dir``, with its directory, ordered by directory name."""
    runs = []
    for path in sorted(Path(sweep_dir).rglob(RUN_FILE), key=lambda p: (len(p.parts), str(p))):
        run = json.loads(path.read_text())
        run["dir"] = str(path.parent)
        runs.append(run)
    return runs


def short_labels(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's overrides without those all runs share (``+experiment/attention=alibi`` -> ``alibi``)."""
    sets = [r.get("overrides") or [r.get("label") or Path(r["dir"]).name] for r in runs]
    common = set.intersection(*map(set, sets)) if len(sets) > 1 else set()
    labels = []
    for overrides in sets:
        parts = [o.lstrip("+").removeprefix("experiment/") for o in overrides if o not in common]
        labels.append(",".join(parts) or "default")
    return labels


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(runs: Sequence[dict[str, Any]]) -> str:
    """The comparison table, one row per run."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r, label in zip(runs, short_labels(runs), strict=True):
        task = r.get("task") or {}
        mem = r.get("peak_memory_mb")
        cells = [
            label,
            f"{r['params'] / 1e6:.3f}M",
            _num(r.get("tokens_per_s"), ",.0f"),
            _num(r.get("final_train_loss"), ".4f"),
            _num(r.get("best_val_loss"), ".4f"),
            _num(task.get("accuracy"), ".3f"),
            _num(task.get("exact_match"), ".3f"),
            "-" if mem is None else f"{mem:,.0f} MiB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_runs(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Val loss (train loss when no eval) against step per run; task accuracy per run in a second panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = dict(zip(map(id, runs), short_labels(runs), strict=True))
    with_acc = [r for r in runs if r.get("task")]
    fig = Figure(figsize=(12 if with_acc else 7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if with_acc else 1, 1)
    for r in runs:
        records = (
            read_metrics(Path(r["dir"]) / "metrics.jsonl")
            if (Path(r["dir"]) / "metrics.jsonl").exists()
            else []
        )
        val = [(m["step"], m["val_loss"]) for m in records if m["kind"] == "eval"]
        curve = val or [(m["step"], m["loss"]) for m in records if m["kind"] == "train"]
        if curve:
            ax.plot(*zip(*curve, strict=True), "o-" if val else "-", label=labels[id(r)], markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if with_acc:
        bx = fig.add_subplot(1, 2, 2)
        bx.barh([labels[id(r)] for r in with_acc], [r["task"]["accuracy"] for r in with_acc])
        bx.set_xlim(0, 1)
        bx.set_xlabel(f"answer accuracy ({', '.join(sorted({r['data'] for r in with_acc}))})")
        bx.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.png`` in ``sweep_dir`` from the runs below it."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no {RUN_FILE} below {sweep_dir}: is it a sweep directory of apps/train.py?")
    md = sweep_dir / "report.md"
    data = ", ".join(sorted({r["data"] for r in runs}))
    common = sorted(set.intersection(*(set(r.get("overrides") or []) for r in runs))) if len(runs) > 1 else []
    shared = f" Shared overrides: `{' '.join(common)}`." if common else ""
    text = f"# Sweep {sweep_dir}\n\n{len(runs)} runs on {data}.{shared}\n\n{markdown_table(runs)}\n"
    md.write_text(text)
    return md, plot_runs(runs, sweep_dir / "report.png")


class ReportCallback:
    """A Hydra callback (``hydra.callbacks.report._target_``) that writes the report after a multirun."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        md, png = write_report(config.hydra.sweep.dir)
        print(md.read_text() + f"\nreport: {md}\nplot:   {png}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):  # Hydra calls every hook; the others do nothing
            return lambda *args, **kwargs: None
        raise AttributeError(name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tinylm.dist.report <sweep dir>")
    for p in write_report(sys.argv[1]):
        print(p)
