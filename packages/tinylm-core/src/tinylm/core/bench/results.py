"""``BenchResult``: the rows a benchmark measured plus everything needed to trust them; JSON/markdown/PNG.

A result is a table: ``rows`` (dicts), of which the ``keys`` columns say *what* was measured (a batch
size, a cache, a prompt length) and the others the measurements, with their ``units``. ``config`` and
``env`` (card, versions, commit, date) travel with it, ``notes`` say what was skipped or estimated, and
``plot`` says how to draw it. ``save(dir)`` writes ``<name>.json`` (the schema below, read back by
``load_result``), ``<name>.md`` (a markdown table) and ``<name>.png``.

JSON schema ``tinylm-bench/1``: {schema, name, mode, created, keys, units, rows, config, env, notes, meta,
plot}; ``plot`` is null or {kind: line|bar, x, y: [columns], series: [columns], logx, logy}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinylm.core.bench.environment import describe_environment

SCHEMA = "tinylm-bench/1"
REQUIRED_FIELDS = ("schema", "mode", "rows", "keys", "units")


@dataclass
class BenchResult:
    """A benchmark's rows, their key columns and units, and the context they were measured in."""

    mode: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # columns identifying a row; compare aligns on them
    units: dict[str, str] = field(default_factory=dict)  # column -> unit ("ms", "tokens/s", "MiB")
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # run-level values: peak used, files written, ...
    plot: dict[str, Any] | None = None
    name: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def stem(self) -> str:
        """The file name stem: ``name``, else the mode."""
        return self.name or self.mode

    def columns(self) -> list[str]:
        """Key columns first, then every other column in the order rows first mention them."""
        cols = list(self.keys)
        for row in self.rows:
            cols += [c for c in row if c not in cols]
        return cols

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema ``tinylm-bench/1``)."""
        return {
            "schema": SCHEMA,
            "name": self.stem,
            "mode": self.mode,
            "created": self.created,
            "keys": self.keys,
            "units": self.units,
            "rows": self.rows,
            "config": self.config,
            "env": self.env,
            "notes": self.notes,
            "meta": self.meta,
            "plot": self.plot,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "result") -> BenchResult:
        """Inverse of ``to_dict``; a wrong schema or missing field raises ``ValueError`` naming ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} is not a benchmark result (expected a JSON object)")
        missing = [f for f in REQUIRED_FIELDS if f not in data]
        if missing:
            raise ValueError(f"{source} is not a benchmark result: missing {', '.join(missing)}")
        if data["schema"] != SCHEMA:
            raise ValueError(f"{source} has schema {data['schema']!r}; this version reads {SCHEMA!r}")
        if not isinstance(data["rows"], list) or not all(isinstance(r, dict) for r in data["rows"]):
            raise ValueError(f"{source}: rows must be a list of objects")
        return cls(
            mode=data["mode"],
            rows=data["rows"],
            keys=list(data["keys"]),
            units=dict(data["units"]),
            config=data.get("config", {}),
            env=data.get("env", {}),
            notes=list(data.get("notes", [])),
            meta=data.get("meta", {}),
            plot=data.get("plot"),
            name=data.get("name"),
            created=data.get("created", ""),
        )

    def to_markdown(self, title: str | None = None) -> str:
        """A heading, the environment line, a config summary, the table and the notes."""
        lines = [f"### {title or self.stem}", ""]
        if self.env:
            lines += [f"{describe_environment(self.env)}", ""]
        summary = config_summary(self.config)
        if summary:
            lines += [summary, ""]
        lines.append(markdown_table(self.rows, self.columns(), self.units))
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (when matplotlib is installed)."""
        from tinylm.core.bench.plots import save_plot

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{self.stem}.json", "md": out / f"{self.stem}.md"}
        png = save_plot(self, out / f"{self.stem}.png")
        if png is not None:
            paths["png"] = png
        self.meta["files"] = {k: str(v) for k, v in paths.items()}
        document = json.dumps(_finite(self.to_dict()), indent=1, default=_json_default, allow_nan=False)
        paths["json"].write_text(document + "\n")
        paths["md"].write_text(self.to_markdown())
        return paths


def load_result(path: str | Path) -> BenchResult:
    """A ``BenchResult`` from a JSON file that ``save`` wrote; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark result at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg} at line {e.lineno})") from None
    return BenchResult.from_dict(data, source=str(path))


def format_value(value: Any) -> str:
    """A table cell: 4 significant digits for floats, thousands separators for big numbers, '-' for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e4):
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value).replace("|", "\\|")


def markdown_table(
    rows: list[dict[str, Any]], columns: list[str], units: dict[str, str] | None = None
) -> str:
    """A GitHub markdown table; numeric columns right-aligned, the unit in each header."""
    if not rows:
        return "_no rows_"
    units = units or {}
    header = [f"{c} ({units[c]})" if _unit_adds(c, units.get(c)) else c for c in columns]
    numeric = [_numeric_column([r.get(c) for r in rows]) for c in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(format_value(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _numeric_column(values: list[Any]) -> bool:
    """Every non-null value is a number (not a bool), and there is at least one."""
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


def _unit_adds(column: str, unit: str | None) -> bool:
    """Whether the header needs ``(unit)``: not when the name already ends in it (``p10_ms``, ``mib``)."""
    return bool(unit) and not column.lower().endswith(unit.lower())


def config_summary(config: dict[str, Any]) -> str:
    """One line: the model shape and the run settings that change numbers (dtype, compile, device)."""
    model = config.get("model")
    if not isinstance(model, dict):
        return ""
    shape = (
        f"{model.get('architecture')} dim {model.get('dim')} x {model.get('n_layers')} layers, "
        f"{model.get('n_heads')}/{model.get('n_kv_heads')} heads, vocab {model.get('vocab_size')}"
    )
    run = [f"{k}={config[k]}" for k in ("dtype", "compile", "device", "warmup", "repeats") if k in config]
    return f"model: {shape}; " + ", ".join(run)


def _finite(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)
