"""Benchmark results: JSON/markdown/PNG files, load errors, and compare's row alignment."""

import importlib.util
import json
import logging
import math
import sys

import pytest

from tinylm.core.bench import (
    BenchResult,
    compare,
    compare_results,
    load_result,
    markdown_table,
    result_labels,
)

PNG = b"\x89PNG\r\n\x1a\n"
# matplotlib is optional for tinylm-core (CI tests the package alone, without it): PNGs only when present.
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")


def decode_result(name: str, speeds: dict[tuple[str, int], float], card: str = "cpu") -> BenchResult:
    return BenchResult(
        mode="decode",
        name=name,
        rows=[
            {"cache": c, "batch_size": b, "tokens_per_s": v, "step_ms": 1000 / v}
            for (c, b), v in speeds.items()
        ],
        keys=["cache", "batch_size"],
        units={"tokens_per_s": "tokens/s", "step_ms": "ms"},
        env={
            "card": card,
            "torch": "2.x",
            "commit": "0123456789abcdef",
            "dirty": False,
            "date": "2026-01-02T03:04",
        },
        notes=["a note"],
        plot={"kind": "line", "x": "batch_size", "y": ["tokens_per_s"], "series": ["cache"], "logx": True},
    )


def test_save_writes_json_markdown_and_png_that_load_back(tmp_path):
    result = decode_result("run", {("standard", 1): 100.0, ("standard", 8): 640.5})
    result.rows[0]["broken"] = math.nan
    paths = result.save(tmp_path)
    assert set(paths) == ({"json", "md", "png"} if HAS_MATPLOTLIB else {"json", "md"})
    doc = json.loads(paths["json"].read_text())  # strict JSON: NaN became null
    assert doc["schema"] == "tinylm-bench/1" and doc["name"] == "run" and doc["mode"] == "decode"
    assert doc["rows"][0]["broken"] is None and doc["env"]["card"] == "cpu"
    if HAS_MATPLOTLIB:
        assert paths["png"].read_bytes()[:8] == PNG
    md = paths["md"].read_text()
    assert "| cache | batch_size | tokens_per_s (tokens/s) | step_ms | broken |" in md
    assert "| standard | 8 | 640.5 | 1.561 | - |" in md
    assert "cpu · torch 2.x · 0123456789 · 2026-01-02" in md and "- a note" in md
    again = load_result(paths["json"])
    assert again.rows[1] == result.rows[1] and again.keys == result.keys and again.units == result.units


def test_markdown_table_formats_and_aligns():
    table = markdown_table(
        [{"name": "a|b", "n": 123456, "x": 0.000123456, "ok": True, "none": None}],
        ["name", "n", "x", "ok", "none"],
    )
    lines = table.splitlines()
    assert lines[1] == "|---|---:|---:|---|---|"
    assert lines[2] == "| a\\|b | 123,456 | 0.0001235 | yes | - |"
    assert markdown_table([], ["a"]) == "_no rows_"


def test_save_without_matplotlib_skips_only_the_png(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with caplog.at_level(logging.WARNING):
        paths = decode_result("r", {("standard", 1): 1.0}).save(tmp_path)
    assert set(paths) == {"json", "md"} and not (tmp_path / "r.png").exists()
    assert "matplotlib is not installed" in caplog.text


@needs_matplotlib
def test_a_result_without_rows_still_draws_a_png(tmp_path):
    paths = BenchResult(mode="quant", notes=["nothing registered"]).save(tmp_path)
    assert paths["png"].read_bytes()[:8] == PNG
    assert "_no rows_" in paths["md"].read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ('{"schema": "other/9", "mode": "x", "rows": [], "keys": [], "units": {}}', "has schema 'other/9'"),
        ('{"schema": "tinylm-bench/1", "mode": "x"}', "missing rows, keys, units"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_load_result_rejects_other_files(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_result(path)


def test_load_result_of_a_missing_file():
    with pytest.raises(FileNotFoundError, match="no benchmark result"):
        load_result("/no/such/result.json")


def test_compare_aligns_rows_by_key_columns_and_adds_ratios():
    a = decode_result("before", {("standard", 1): 100.0, ("standard", 8): 400.0})
    b = decode_result(
        "after", {("standard", 8): 600.0, ("standard", 1): 150.0, ("paged", 8): 500.0}, card="gpu"
    )
    merged = compare_results([a, b])
    assert merged.keys == ["cache", "batch_size"]
    rows = {(r["cache"], r["batch_size"]): r for r in merged.rows}
    assert rows["standard", 8]["tokens_per_s [before]"] == 400.0
    assert rows["standard", 8]["tokens_per_s [after]"] == 600.0
    assert rows["standard", 8]["tokens_per_s after / before"] == pytest.approx(1.5)
    assert rows["standard", 1]["tokens_per_s after / before"] == pytest.approx(1.5)
    assert rows["paged", 8]["tokens_per_s [before]"] is None  # only in the second input
    assert rows["paged", 8]["tokens_per_s after / before"] is None
    assert "step_ms [before]" not in rows["standard", 8]  # only the headline (plotted) metrics
    md = compare([a, b])
    assert md.startswith("### compare: before vs after")
    assert "| standard | 8 | 400 | 600 | 1.5 |" in md and "| paged | 8 | - | 500 | - |" in md
    assert "gpu · torch 2.x" in md


@needs_matplotlib
def test_compare_result_saves_with_a_png(tmp_path):
    a = decode_result("a", {("standard", 1): 1.0, ("standard", 2): 2.0})
    b = decode_result("b", {("standard", 1): 2.0, ("standard", 2): 3.0})
    paths = compare_results([a, b]).save(tmp_path)
    assert paths["png"].read_bytes()[:8] == PNG
    assert load_result(paths["json"]).meta["labels"] == ["a", "b"]


def test_result_labels_are_unique():
    same = [decode_result("decode", {}), decode_result("decode", {})]
    assert result_labels(same, ["runs/h100/decode.json", "runs/h200/decode.json"]) == [
        "h100/decode",
        "h200/decode",
    ]
    assert result_labels(same) == ["decode#1", "decode#2"]
