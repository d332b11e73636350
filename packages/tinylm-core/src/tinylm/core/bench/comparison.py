"""``compare`` mode: several result files side by side, rows aligned by their key columns.

Rows of different results are the same measurement when their key columns agree (e.g. ``cache`` and
``batch_size`` for decode). For each headline metric (the columns a result plots, e.g. ``tokens_per_s``)
the comparison has one column per input, ``tokens_per_s [label]``, and a ratio of each later input to the
first, so "b is 1.3x a" reads off the table. A key present in only some inputs leaves '-' in the others.
Labels are the results' names, made unique with their folder names when needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinylm.core.bench.config import BENCH_MODES, BenchConfig
from tinylm.core.bench.environment import describe_environment
from tinylm.core.bench.results import BenchResult, load_result


def result_labels(results: Sequence[BenchResult], paths: Sequence[str | Path] | None = None) -> list[str]:
    """A short unique label per result: its name, else ``folder/name``, else ``name#i``."""
    labels = [r.stem for r in results]
    if paths is not None and len(set(labels)) < len(labels):
        labels = [f"{Path(p).parent.name}/{r.stem}" for r, p in zip(results, paths, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def headline_metrics(results: Sequence[BenchResult]) -> list[str]:
    """The columns to compare: the first result's plotted ones, else its numeric non-key columns."""
    first = results[0]
    present = {c for r in results for row in r.rows for c in row}
    plotted = [c for c in (first.plot or {}).get("y", []) if c in present]
    if plotted:
        return plotted
    return [
        c
        for c in first.columns()
        if c not in first.keys
        and any(
            isinstance(row.get(c), int | float) and not isinstance(row.get(c), bool) for row in first.rows
        )
    ]


def compare_results(
    results: Sequence[BenchResult], labels: Sequence[str] | None = None, metrics: Sequence[str] | None = None
) -> BenchResult:
    """One ``BenchResult`` whose rows put each input's ``metrics`` side by side, aligned by key columns."""
    if not results:
        raise ValueError("compare needs at least one result")
    labels = list(labels) if labels is not None else result_labels(results)
    metrics = list(metrics) if metrics is not None else headline_metrics(results)
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.keys if k not in keys]
    aligned: dict[tuple[Any, ...], dict[str, Any]] = {}  # key values -> {"m [label]": value}
    for label, r in zip(labels, results, strict=True):
        for row in r.rows:
            values = aligned.setdefault(tuple(_hashable(row.get(k)) for k in keys), {})
            values.update({f"{m} [{label}]": row.get(m) for m in metrics})
    rows = []
    for ident, values in aligned.items():
        merged = dict(zip(keys, (list(v) if isinstance(v, tuple) else v for v in ident), strict=True))
        merged.update({f"{m} [{label}]": values.get(f"{m} [{label}]") for m in metrics for label in labels})
        if len(labels) > 1 and metrics:
            base = merged[f"{metrics[0]} [{labels[0]}]"]
            for label in labels[1:]:
                value = merged[f"{metrics[0]} [{label}]"]
                ok = _is_number(base) and _is_number(value) and base != 0
                merged[f"{metrics[0]} {label} / {labels[0]}"] = value / base if ok else None
        rows.append(merged)
    units = {f"{m} [{label}]": results[0].units.get(m, "") for m in metrics for label in labels}
    units.update({k: results[0].units[k] for k in keys if k in results[0].units})
    modes = sorted({r.mode for r in results})
    notes = [f"{label}: {r.mode}, {describe_environment(r.env) if r.env else 'no environment recorded'}"
             for label, r in zip(labels, results, strict=True)]  # fmt: skip
    if len(modes) > 1:
        notes.append(
            f"the inputs come from different modes ({', '.join(modes)}): rows align only on shared keys"
        )
    return BenchResult(
        mode="compare",
        rows=rows,
        keys=keys,
        units={c: u for c, u in units.items() if u},
        notes=notes,
        meta={"labels": labels, "metrics": metrics, "modes": modes},
        plot=_compare_plot(results[0], keys, metrics, labels),
    )


def compare(results: Sequence[BenchResult], labels: Sequence[str] | None = None) -> str:
    """The side-by-side markdown table of ``results`` (see ``compare_results``)."""
    return compare_results(results, labels).to_markdown(
        title="compare: " + " vs ".join(labels or result_labels(results))
    )


def _compare_plot(
    first: BenchResult, keys: list[str], metrics: list[str], labels: list[str]
) -> dict[str, Any]:
    y = [f"{m} [{label}]" for m in metrics for label in labels]
    spec = first.plot or {}
    if spec.get("kind") == "line" and spec.get("x") in keys:
        series = [k for k in keys if k != spec["x"]]
        return {"kind": "line", "x": spec["x"], "y": y, "series": series, "logx": spec.get("logx", False)}
    return {"kind": "bar", "y": y, "series": keys, "logy": spec.get("logy", False)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@BENCH_MODES.register("compare")
def bench_compare(cfg: BenchConfig) -> BenchResult:
    """Load ``cfg.inputs`` (result JSON files) and lay them side by side."""
    results = [load_result(p) for p in cfg.inputs]
    labels = result_labels(results, cfg.inputs)
    result = compare_results(results, labels)
    result.meta["inputs"] = list(cfg.inputs)
    return result
