"""The PNG of a ``BenchResult``: lines (a measurement against a swept key) or bars (one per row).

``result.plot`` says what to draw: ``{"kind": "line", "x": "batch_size", "y": ["tokens_per_s"],
"series": ["cache"]}`` draws one line per (series value, y column); ``{"kind": "bar", "y": [...]}`` draws
grouped bars labelled by the key columns. matplotlib is optional for tinylm-core: it is imported here,
lazily, on a bare Agg canvas (no pyplot, no display, the caller's backend untouched); without it the PNG
is skipped with a logged warning and the JSON and markdown are still written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinylm.core.bench.results import BenchResult

log = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _label(row: dict[str, Any], columns: list[str]) -> str:
    return ", ".join(f"{row.get(c)}" if len(columns) == 1 else f"{c}={row.get(c)}" for c in columns)


def _axis_label(result: BenchResult, columns: list[str]) -> str:
    units = {result.units.get(c, "") for c in columns}
    unit = units.pop() if len(units) == 1 else ""
    name = columns[0] if len(columns) == 1 else "value"
    return f"{name} ({unit})" if unit else name


def save_plot(result: BenchResult, path: str | Path) -> Path | None:
    """Draw ``result`` as ``result.plot`` says and save a PNG; None (and a warning) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: %s not drawn (pip install matplotlib)", path)
        return None
    spec = result.plot or {}
    y_cols = [c for c in spec.get("y", []) if any(_number(r.get(c)) is not None for r in result.rows)]
    fig = Figure(figsize=(7.5, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not result.rows or not y_cols:
        why = "; ".join(result.notes[:2]) or "nothing to plot"
        ax.text(0.5, 0.5, f"no rows to plot\n{why[:160]}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    elif spec.get("kind") == "line" and spec.get("x"):
        _draw_lines(ax, result, spec, y_cols)
    else:
        _draw_bars(ax, result, spec, y_cols)
    title = result.mode if result.stem == result.mode else f"{result.mode}: {result.stem}"
    ax.set_title(title + (f" ({result.env['card']})" if result.env.get("card") else ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _draw_lines(ax: Any, result: BenchResult, spec: dict[str, Any], y_cols: list[str]) -> None:
    x_col, series = spec["x"], list(spec.get("series", []))
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in result.rows:
        groups.setdefault(_label(row, series), []).append(row)
    for group, rows in groups.items():
        for y in y_cols:
            points = sorted(
                (_number(r.get(x_col)), _number(r.get(y))) for r in rows if _number(r.get(y)) is not None
            )
            points = [(x, v) for x, v in points if x is not None]
            if not points:
                continue
            name = " ".join(p for p in (group, y if len(y_cols) > 1 else "") if p) or y
            ax.plot(*zip(*points, strict=True), "o-", label=name, markersize=4)
    ax.set_xlabel(x_col + (f" ({result.units[x_col]})" if result.units.get(x_col) else ""))
    ax.set_ylabel(_axis_label(result, y_cols))
    if spec.get("logx"):
        ax.set_xscale("log", base=2)
        xs = sorted({x for r in result.rows if (x := _number(r.get(x_col))) is not None})
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    if spec.get("logy"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _draw_bars(ax: Any, result: BenchResult, spec: dict[str, Any], y_cols: list[str]) -> None:
    label_cols = list(spec.get("series") or result.keys) or [result.columns()[0]]
    labels = [_label(r, label_cols) for r in result.rows]
    width = 0.8 / len(y_cols)
    for i, y in enumerate(y_cols):
        values = [_number(r.get(y)) or 0.0 for r in result.rows]
        positions = [j + (i - (len(y_cols) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(positions, values, width=width, label=y)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(
        labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center"
    )
    ax.set_ylabel(_axis_label(result, y_cols))
    if spec.get("logy"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3, axis="y")
    if len(y_cols) > 1:
        ax.legend(fontsize=8)
