"""Benchmark modes in-process on a tiny model: config checks, registries, memory, quant, prefill/decode."""

import json

import pytest
import torch

from tinylm.core import CACHES, QUANT_SCHEMES, ModelConfig, StandardCache, TinyLM
from tinylm.core.bench import BENCH_MODES, BenchConfig, run_bench
from tinylm.core.bench.memory import kv_bytes_per_token

TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


def config(mode: str, **overrides) -> BenchConfig:
    base = dict(mode=mode, model=ModelConfig(**TINY), device="cpu", warmup=0, repeats=1, peak_tflops=None)
    return BenchConfig(**{**base, **overrides})


def test_every_mode_is_registered():
    expected = {"train_step", "prefill", "decode", "memory", "kernels", "quant", "compare", "time_to_target"}
    assert expected <= set(BENCH_MODES.names())  # other packages may add theirs


def test_standard_cache_is_registered():
    cache = CACHES.build(
        "standard", config=None, batch_size=2, max_seq_len=8, device="cpu", dtype=torch.float32
    )
    assert isinstance(cache, StandardCache) and cache.get_seq_length() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(mode="nope"), "bench.mode must be one of"),
        (dict(dtype="fp8"), "bench.dtype must be one of float32, bfloat16, float16"),
        (dict(baseline="vllm"), "bench.baseline must be one of none, hf"),
        (dict(batch_sizes=[]), "bench.batch_sizes must be a non-empty list"),
        (dict(caches=["no_such"]), "unknown cache 'no_such' in bench.caches; known: .*standard"),
        (dict(peak_tflops="max"), "bench.peak_tflops must be 'measure', a number"),
        (dict(block_size=65), "bench.block_size must be a positive integer <= model.max_seq_len=64"),
        (dict(mode="decode", prompt_length=60, new_tokens=8), "prompt_length + bench.new_tokens = 68"),
        (dict(mode="prefill", prompt_lengths=[8, 100]), "bench.prompt_lengths has 100 tokens"),
        (dict(mode="compare"), "mode=compare needs files to read"),
        (dict(new_tokens=1), "bench.new_tokens must be an integer >= 2"),
        (dict(device="tpu"), "bench.device must be auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_bad_config_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        config(overrides.pop("mode", "train_step"), **overrides)


def test_block_size_defaults_to_the_context():
    assert config("memory").block_size == 64


def test_memory_breakdown_measures_activations_and_kv_cache():
    result = run_bench(config("memory", batch_size=2, block_size=16))
    rows = {r["component"]: r for r in result.rows}
    n_params = TinyLM(ModelConfig(**TINY)).num_parameters()
    assert rows["weights (training copy)"]["bytes"] == 4 * n_params
    assert rows["AdamW state"]["bytes"] == 2 * rows["gradients"]["bytes"] == 8 * n_params
    # Logits alone (2 x 16 x 97 float32) are saved for the loss's backward: activations exceed them.
    assert rows["activations 2x16"]["bytes"] > 2 * 16 * 97 * 4
    per_token = 2 * 2 * 2 * 16 * 4  # k and v x layers x kv heads x head_dim x fp32 bytes
    assert (
        rows["KV cache per token"]["bytes"]
        == per_token
        == kv_bytes_per_token(config("memory"), torch.float32)
    )
    assert rows["KV cache 2x16 (standard)"]["bytes"] == rows["KV cache 2x16"]["bytes"] == per_token * 32
    assert result.env["device"] == "cpu" and result.config["batch_size"] == 2


def test_quant_without_schemes_says_so_and_measures_nothing(monkeypatch):
    monkeypatch.setattr(QUANT_SCHEMES, "_entries", {})  # as before tinylm-quant registers any
    result = run_bench(config("quant", prompt_length=8, new_tokens=3))
    assert result.rows == []
    assert "no quantization schemes are registered" in result.notes[0]


def test_quant_measures_each_registered_scheme_against_the_unquantized_model():
    QUANT_SCHEMES.register("test_bf16")(lambda model: model.to(torch.bfloat16))
    try:
        # only this scheme: others may be registered when tinylm-quant was imported in the same run
        result = run_bench(
            config("quant", batch_sizes=[2], prompt_length=8, new_tokens=3, quant_schemes=["test_bf16"])
        )
    finally:
        QUANT_SCHEMES.unregister("test_bf16")
    base, bf16 = result.rows
    assert (base["scheme"], bf16["scheme"]) == ("none", "test_bf16")
    assert bf16["weights_mib"] == pytest.approx(base["weights_mib"] / 2, rel=0.01)
    assert base["max_abs_logit_diff"] == 0 and 0 < bf16["max_abs_logit_diff"] < 0.5
    assert 0.5 <= bf16["top1_agreement"] <= 1.0
    assert bf16["decode_tokens_per_s"] > 0 and bf16["prefill_ms"] > 0


def test_quant_with_an_unknown_scheme_fails_before_measuring():
    with pytest.raises(KeyError, match="unknown quantization scheme 'int3'"):
        run_bench(config("quant", quant_schemes=["int3"], prompt_length=8, new_tokens=3))


def test_decode_rows_per_cache_and_batch_size():
    result = run_bench(config("decode", batch_sizes=[1, 3], prompt_length=4, new_tokens=3))
    assert [(r["cache"], r["batch_size"]) for r in result.rows] == [("standard", 1), ("standard", 3)]
    for r in result.rows:
        assert r["tokens_per_s"] > 0 and r["prefill_ms"] > 0 and r["step_ms"] > 0
        assert "hf_tokens_per_s" not in r  # baseline=none


def test_train_step_reports_throughput_and_mfu_against_a_given_peak():
    result = run_bench(config("train_step", batch_size=2, block_size=16, peak_tflops=1.0))
    (row,) = result.rows
    assert row["tokens_per_s"] == pytest.approx(2 * 16 / (row["step_ms"] * 1e-3))
    fpt = result.meta["flops_per_token"]
    assert row["mfu_pct"] == pytest.approx(100 * row["tokens_per_s"] * fpt / 1e12)
    assert row["mfu_spec_pct"] is None  # no datasheet peak for a CPU


def test_profile_writes_a_chrome_trace_and_the_top_ops_table(tmp_path, capsys):
    result = run_bench(
        config("prefill", prompt_lengths=[8], batch_sizes=[1], profile=True, out_dir=str(tmp_path))
    )
    trace = json.loads((tmp_path / "prefill_trace.json").read_text())
    assert trace["traceEvents"]  # Chrome trace format
    table = (tmp_path / "prefill_ops.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert "top 15 ops by self_cpu_time_total" in capsys.readouterr().out
    assert result.meta["profile"]["trace"] == str(tmp_path / "prefill_trace.json")
    assert any("profiled run" in n for n in result.notes)
