"""apps/bench.py end to end on CPU: every CPU-capable mode writes valid JSON, markdown and a PNG; compare
and time_to_target read result files back; bad config values end in one line and exit code 2."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=64", "vocab_size=97"]
FAST = ["device=cpu", "warmup=1", "repeats=2", "batch_size=2", "block_size=16", "prompt_lengths=[4,8]"]
FAST += ["batch_sizes=[1,2]", "prompt_length=4", "new_tokens=4"]
MODES = ("train_step", "prefill", "decode", "memory", "kernels", "quant")


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "apps" / "bench.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """All CPU-capable modes in one Hydra multirun: one process, so torch and transformers import once."""
    out = tmp_path_factory.mktemp("bench")
    proc = bench(
        "-m", f"mode={','.join(MODES)}", *TINY, *FAST, "baseline=hf",
        f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${mode}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def load(sweep: Path, mode: str) -> tuple[dict, str]:
    """The JSON document and markdown of ``mode``, after checking the three files and the schema."""
    folder = sweep / mode
    doc = json.loads((folder / f"{mode}.json").read_text())
    assert {
        "schema",
        "name",
        "mode",
        "created",
        "keys",
        "units",
        "rows",
        "config",
        "env",
        "notes",
        "plot",
    } <= set(doc)
    assert doc["schema"] == "tinylm-bench/1" and doc["mode"] == mode and doc["config"]["mode"] == mode
    assert doc["env"]["device"] == "cpu" and doc["env"]["torch"] == torch.__version__
    assert "commit" in doc["env"] and doc["config"]["model"]["dim"] == 64
    assert (folder / f"{mode}.png").read_bytes()[:8] == PNG
    md = (folder / f"{mode}.md").read_text()
    assert md.startswith(f"### {mode}\n")
    return doc, md


def test_train_step(sweep):
    doc, md = load(sweep, "train_step")
    (row,) = doc["rows"]
    assert (row["batch_size"], row["block_size"], row["dtype"]) == (2, 16, "float32")
    assert row["tokens_per_s"] == pytest.approx(32 / (row["step_ms"] / 1e3))
    assert row["mfu_pct"] > 0 and doc["meta"]["peak_source"].startswith("measured float32 matmul")
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "| tokens_per_s (tokens/s) |" in header and "| mfu_pct (%) |" in header


def test_prefill_against_hf(sweep):
    doc, md = load(sweep, "prefill")
    assert [(r["batch_size"], r["prompt_length"]) for r in doc["rows"]] == [(1, 4), (1, 8), (2, 4), (2, 8)]
    for r in doc["rows"]:
        assert r["latency_ms"] > 0 and r["hf_latency_ms"] > 0
        assert r["speedup"] == pytest.approx(r["hf_latency_ms"] / r["latency_ms"])
    assert "| cache | batch_size | prompt_length | latency_ms |" in md


def test_decode_against_hf_generate(sweep):
    doc, md = load(sweep, "decode")
    assert [(r["cache"], r["batch_size"]) for r in doc["rows"]] == [("standard", 1), ("standard", 2)]
    for r in doc["rows"]:
        assert r["same_tokens"] == 1.0  # float32 greedy: TinyLM and its to_hf twin agree token for token
        assert r["tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / r["hf_tokens_per_s"])
    assert any("LlamaForCausalLM" in n for n in doc["notes"])
    assert "hf_tokens_per_s (tokens/s)" in md


def test_memory(sweep):
    doc, _ = load(sweep, "memory")
    rows = {r["component"]: r for r in doc["rows"]}
    assert rows["AdamW state"]["bytes"] == 2 * rows["gradients"]["bytes"]
    assert rows["activations 2x16"]["bytes"] > 0
    assert (
        rows["KV cache 2x16 (standard)"]["bytes"] == rows["KV cache 2x16"]["bytes"] == 2 * 16 * 2 * 2 * 64 * 4
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel scripts really run")
def test_kernels_are_skipped_with_a_note_on_cpu(sweep):
    doc, md = load(sweep, "kernels")
    assert doc["rows"] == [] and "need a CUDA device" in md


def test_quant_measures_registered_schemes_or_says_there_are_none(sweep):
    doc, md = load(sweep, "quant")
    if importlib.util.find_spec("tinylm.quant") is None:  # apps/bench.py imports it when installed
        assert doc["rows"] == [] and "no quantization schemes are registered" in md
    else:
        assert doc["rows"][0]["scheme"] == "none" and len(doc["rows"]) > 1


def test_compare_lays_results_side_by_side(sweep, tmp_path):
    doc = json.loads((sweep / "decode" / "decode.json").read_text())
    for row in doc["rows"]:
        row["tokens_per_s"] *= 2
    (tmp_path / "faster").mkdir()
    (tmp_path / "faster" / "decode.json").write_text(json.dumps(doc))
    out = tmp_path / "cmp"
    proc = bench(
        "mode=compare", f"inputs=[{sweep / 'decode' / 'decode.json'},{tmp_path / 'faster' / 'decode.json'}]",
        f"hydra.run.dir={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "compare.json").read_text())
    assert result["mode"] == "compare" and result["meta"]["labels"] == ["decode/decode", "faster/decode"]
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["tokens_per_s faster/decode / decode/decode"] == pytest.approx(2.0)
    assert (out / "compare.png").read_bytes()[:8] == PNG
    md = (out / "compare.md").read_text()
    assert "| tokens_per_s [decode/decode] (tokens/s) | tokens_per_s [faster/decode] (tokens/s) |" in md
    assert md in proc.stdout  # the app prints the table it wrote


def test_time_to_target_reads_a_training_log(tmp_path):
    records = [
        {"kind": "train", "step": 10, "loss": 2.0, "elapsed": 4.0},
        {"kind": "eval", "step": 10, "val_loss": 1.9},
        {"kind": "train", "step": 20, "loss": 1.5, "elapsed": 8.5},
        {"kind": "eval", "step": 20, "val_loss": 1.46},
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = bench(
        "mode=time_to_target", f"inputs=[{tmp_path / 'run'}]", "target=1.47", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "time_to_target.json").read_text())["rows"]
    assert (row["reached"], row["step"], row["elapsed_s"], row["best_val_loss"]) == (True, 20, 8.5, 1.46)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mode=decode", "prompt_length=60", "new_tokens=8"], "bench.prompt_length + bench.new_tokens = 68"),
        (["mode=nope"], "bench.mode must be one of"),
        (["mode=compare", "inputs=[/no/such.json]"], "no benchmark result at /no/such.json"),
    ],
)
def test_bad_config_is_one_clear_line(args, message, tmp_path):
    proc = bench(*TINY, *args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
