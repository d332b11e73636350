"""The bench ``quant`` mode (tinylm.core.bench) with tinylm-quant's schemes registered."""

import pytest
import torch

import tinylm.quant  # noqa: F401  (registers the schemes)
from tinylm.core import ModelConfig
from tinylm.core.bench import BenchConfig, run_bench


def config(**kw) -> BenchConfig:
    model = ModelConfig.from_preset("tiny", vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    base = dict(mode="quant", model=model, device="cpu", warmup=0, repeats=1, batch_sizes=[1])
    return BenchConfig(**{**base, "prompt_length": 8, "new_tokens": 3, "out_dir": "unused", **kw})


def test_named_schemes_are_measured_against_none():
    result = run_bench(config(quant_schemes=["int8_weight_only", "intx4_weight_only"]))
    rows = {r["scheme"]: r for r in result.rows}
    assert list(rows) == ["none", "int8_weight_only", "intx4_weight_only"]
    assert rows["none"]["kl_vs_base"] == 0 and rows["none"]["bytes_vs_base"] == 1
    assert 0 < rows["int8_weight_only"]["kl_vs_base"] < rows["intx4_weight_only"]["kl_vs_base"] < 0.05
    assert rows["int8_weight_only"]["bytes_vs_base"] < 0.5  # float32 baseline
    assert rows["int8_weight_only"]["decode_tokens_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_cuda_only_schemes_skip_with_a_note_or_fail_when_named():
    result = run_bench(config(quant_schemes=[]))
    assert "int8_dynamic" in [r["scheme"] for r in result.rows]
    assert any("skipped int4_weight_only" in n and "CUDA" in n for n in result.notes)
    with pytest.raises(ValueError, match="float8.*cannot run here"):
        run_bench(config(quant_schemes=["float8"]))
