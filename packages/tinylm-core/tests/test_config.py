"""Every architecture x size preset builds; every bad value gives an error that says what is allowed."""

import pytest
import torch

from tinylm.core import (
    ARCHITECTURES,
    SIZE_PRESETS,
    ArchitectureConfig,
    ModelConfig,
    TinyLM,
    get_architecture,
    register_architecture,
)


@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
@pytest.mark.parametrize("size", list(SIZE_PRESETS))
def test_every_preset_builds(architecture, size):
    cfg = ModelConfig.from_preset(size, vocab_size=512, architecture=architecture)
    with torch.device("meta"):  # no memory for the large presets
        model = TinyLM(cfg)
    assert len(model.layers) == SIZE_PRESETS[size]["n_layers"]
    expected = cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
    assert (
        model.num_parameters() - model.num_parameters(non_embedding=True)
        >= expected - cfg.vocab_size * cfg.dim
    )
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_architecture_presets_are_what_they_claim():
    llama, gpt = get_architecture("llama"), get_architecture("gpt")
    assert (llama.norm, llama.positional, llama.mlp, llama.bias) == ("rmsnorm", "rope", "gated", False)
    assert (gpt.norm, gpt.positional, gpt.mlp, gpt.bias, gpt.tie_embeddings) == (
        "layernorm",
        "learned",
        "standard",
        True,
        True,
    )
    get_architecture("llama").norm = "layernorm"  # a copy: the preset is unchanged
    assert get_architecture("llama").norm == "rmsnorm"


def test_overrides_beat_the_architecture():
    cfg = ModelConfig(architecture="gpt", norm="rmsnorm", vocab_size=10)
    assert cfg.norm == "rmsnorm" and cfg.positional == "learned"


def test_register_architecture():
    register_architecture("nope_test", ArchitectureConfig(positional="none", mlp="swiglu"))
    try:
        cfg = ModelConfig(architecture="nope_test", vocab_size=10, dim=32, n_heads=2, n_layers=1)
        assert cfg.positional == "none" and cfg.hidden_dim == 96  # 8/3 * 32 rounded up to 32
        TinyLM(cfg)(torch.randint(0, 10, (1, 4)))
    finally:
        ARCHITECTURES.unregister("nope_test")


def test_derived_fields():
    cfg = ModelConfig(dim=96, n_heads=6, vocab_size=10)
    assert cfg.head_dim == 16 and cfg.n_kv_heads == 6 and cfg.hidden_dim == 256
    assert ModelConfig(architecture="gpt", dim=96, n_heads=6).hidden_dim == 384


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dim=100, n_heads=3), r"model.dim=100 is not divisible by model.n_heads=3"),
        (dict(n_heads=4, n_kv_heads=3), r"n_heads=4 is not divisible by model.n_kv_heads=3"),
        (dict(architecture="mamba"), r"unknown architecture 'mamba'; known architecture names: gpt, llama"),
        (dict(norm="batchnorm"), r"unknown norm 'batchnorm' \(model.norm\); known: layernorm, rmsnorm"),
        (dict(attention="flash9"), r"unknown attention backend 'flash9' \(model.attention\); known: .*sdpa"),
        (dict(mlp="kan"), r"unknown mlp 'kan' \(model.mlp\); known: .*swiglu"),
        (
            dict(positional="xpos"),
            r"unknown positional 'xpos' \(model.positional\); known: learned, none, rope",
        ),
        (dict(activation="tanh"), r"unknown activation 'tanh' \(model.activation\); known: .*relu2"),
        (dict(block="sandwich"), r"unknown block 'sandwich' \(model.block\); known: postnorm, prenorm"),
        (dict(n_layers=0), r"model.n_layers must be a positive integer, got 0"),
        (dict(dropout=1.5), r"model.dropout must be in \[0, 1\)"),
        (dict(dim=12, n_heads=4), r"rope needs an even head_dim, got 3"),
    ],
)
def test_bad_values_have_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_unknown_keys_and_sizes():
    with pytest.raises(ValueError, match=r"unknown model config keys \['n_layer'\]; allowed: .*n_layers"):
        ModelConfig.from_dict({"n_layer": 2})
    with pytest.raises(KeyError, match="known sizes: tiny, small, medium, large"):
        ModelConfig.from_preset("huge")
