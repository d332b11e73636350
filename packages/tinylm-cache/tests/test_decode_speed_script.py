"""benchmarks/decode_speed.py end to end on CPU with a tiny model: every row kind runs and its tokens match
the eager static decoder, so a GPU call is not the first run of a changed script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_decode_speed(tmp_path: Path, args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the script with ``args`` on CPU (output into ``tmp_path``); its process and its JSON rows."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(BENCH / "decode_speed.py"), *args.split(), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads((tmp_path / "decode_speed.json").read_text())["rows"]


@pytest.mark.slow
def test_every_row_runs_and_agrees_with_the_eager_decoder(tmp_path):
    args = ("--device cpu --workloads quick:1 --new-tokens 6 --repeats 1 --graph-steps 4 "
            "--decode-attention kernel,kernel_rope --skip notune,opaque,fast,autotune --rounds 2 "
            "--fast-options combo_kernels=True --inductor combo_kernels=True --linear-kernel "
            "--decode-blocks epilogue,prologue")  # fmt: skip
    proc, rows = run_decode_speed(tmp_path, args)
    labels = [r["row"] for r in rows]
    assert labels == [
        "static+compile (previous)", "fast+fused", "fast+fused, math decode attention",
        "fast+fused, kernel decode attention", "fast+fused, kernel attention, inductor combo_kernels=True",
        "fast+fused, kernel_rope attention, inductor combo_kernels=True",
        "fast+fused, kernel attention, few-row linear kernel, inductor combo_kernels=True",
        "fast+fused, kernel attention, decode blocks (epilogue folds), inductor combo_kernels=True",
        "fast+fused, kernel_rope attention, decode blocks (epilogue folds), inductor combo_kernels=True",
        "fast+fused, kernel attention, decode blocks (prologue folds), inductor combo_kernels=True",
        "fast+fused, kernel_rope attention, decode blocks (prologue folds), inductor combo_kernels=True",
        "plain loop+compile (gpt-fast style)",
        "fast+fused, kernel attention, inductor combo_kernels=True, 4 steps per CUDA graph",
    ]  # fmt: skip
    for r in rows:
        assert "error" not in r, r
        assert r["agreement_vs_eager_static"] == 1.0 and "tokens_per_s" in r, r  # timings: not checked
        assert len(r["rounds_tokens_per_s"]) == 2 and len(r["vs_first_row_rounds"]) == 2, r
    assert rows[0]["vs_first_row_rounds"] == [1.0, 1.0]
    assert "paired per round (2 rounds)" in proc.stdout


@pytest.mark.slow
def test_int8_rows_run_and_agree_with_the_eager_decoder(tmp_path):
    """The --quant rows: bf16, int8 through the compiled reduction, int8 compiled as F.linear, and int8 with
    the RMSNorms folded into the GEMVs (on CPU: the op's reference backend), also marked for PDL launches
    (which on CPU fall back to the same reference)."""
    pytest.importorskip("tinylm.quant", reason="the --quant rows need tinylm-quant (a workspace member)")
    args = ("--device cpu --quant int8_weight_only_gemv --quant-model quick --new-tokens 6 --repeats 1 "
            "--skip triton_gemv --int8-linear-form --int8-fold-norms mlp --int8-fold-norms mlp,attn "
            "--graph-steps 2 --int8-pdl --workloads=")  # fmt: skip
    _, rows = run_decode_speed(tmp_path, args)
    base = "fast+fused {}, sdpa attention"
    graphed = base + ", 2 steps per CUDA graph"
    variants = ["", " (F.linear form)", " (RMSNorm folded into mlp)", " (RMSNorm folded into mlp,attn)",
                " (RMSNorm folded into mlp, PDL)", " (RMSNorm folded into mlp,attn, PDL)"]  # fmt: skip
    assert [r["row"] for r in rows] == [
        base.format("bf16"),
        graphed.format("bf16"),
        *[row.format("int8_weight_only_gemv") + v for v in variants for row in (base, graphed)],
    ]
    for r in rows:
        assert "error" not in r and "tokens_per_s" in r, r
    agree = [r["agreement_vs_eager_static"] for r in rows]
    # int8 is lossy: the two int8 forms compute the same numbers, so they agree with each other's oracle;
    # k steps per CUDA graph run the same steps as one step per call
    assert agree[2] == agree[4], agree
    assert agree[0::2] == agree[1::2], agree
    assert agree[-4:] == agree[-8:-4], agree  # the PDL rows compute what the folded rows do


@pytest.mark.slow
def test_int4_rows_with_only_the_k_step_rows(tmp_path):
    """``--quant int4_weight_only_gemv --skip quant_step``: bf16 and int4 (the compiled reduction, and the
    Triton GEMV row, which on CPU takes the reference) at k steps per graph only, each run to completion."""
    pytest.importorskip("tinylm.quant", reason="the --quant rows need tinylm-quant (a workspace member)")
    args = ("--device cpu --quant int4_weight_only_gemv --quant-model quick --new-tokens 6 --repeats 1 "
            "--skip quant_step --graph-steps 2 --workloads=")  # fmt: skip
    _, rows = run_decode_speed(tmp_path, args)
    graphed = "fast+fused {}, sdpa attention, 2 steps per CUDA graph"
    assert [r["row"] for r in rows] == [
        graphed.format("bf16"),
        graphed.format("int4_weight_only_gemv"),
        graphed.format("int4_weight_only_gemv") + " (Triton GEMV)",
    ]
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in rows), rows
    assert rows[1]["agreement_vs_eager_static"] == rows[2]["agreement_vs_eager_static"]  # the same numbers
