"""Model FLOPs per token against a hand count, MFU arithmetic, datasheet peaks, the matmul peak."""

import pytest
import torch

from tinylm.core import TinyLM
from tinylm.core.bench import flops_per_token, matmul_parameters, measure_matmul_tflops, mfu, spec_peak_tflops


def test_llama_flops_per_token_match_a_hand_count():
    # dim 64, 2 layers, 4 heads of 16, 2 kv heads, gated MLP of 192, untied head, vocab 97, no biases.
    model = TinyLM(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=192, max_seq_len=64)
    attn = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64  # q, k, v (2 kv heads x 16), o
    mlp = 3 * 64 * 192  # gate, up, down
    norms = 2 * 64
    n = 2 * (attn + mlp + norms) + 64 + 64 * 97  # layers, final norm, lm head (the embedding is a lookup)
    assert matmul_parameters(model) == n == model.num_parameters(non_embedding=True)
    t = 48
    expected = 6 * n + 12 * 2 * 4 * 16 * t
    assert flops_per_token(model, t) == expected
    assert flops_per_token(model, t, training=False) == pytest.approx(expected / 3)


def test_a_tied_head_counts_and_position_table_does_not():
    model = TinyLM(vocab_size=50, architecture="gpt", dim=32, n_layers=1, n_heads=2, max_seq_len=16)
    assert model.lm_head.weight is model.tok_emb.weight
    non_embedding = model.num_parameters(non_embedding=True)  # without token and position tables
    assert matmul_parameters(model) == non_embedding + 50 * 32


def test_mfu_is_achieved_over_peak():
    assert mfu(1e5, 6e8, 100.0) == pytest.approx(1e5 * 6e8 / 1e14)
    assert mfu(1e5, 6e8, None) is None


@pytest.mark.parametrize(
    ("card", "dtype", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
        ("NVIDIA H100 PCIe", torch.float16, 756.0),
        ("NVIDIA H200", torch.bfloat16, 989.4),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA H100 80GB HBM3", torch.float32, None),
        ("Some Card", torch.bfloat16, None),
    ],
)
def test_spec_peaks(card, dtype, peak):
    assert spec_peak_tflops(card, dtype) == peak


def test_measured_matmul_rate_is_positive_and_plausible_on_cpu():
    tflops = measure_matmul_tflops("cpu", torch.float32, size=128, warmup=1, repeats=3)
    assert 1e-6 < tflops < 100
