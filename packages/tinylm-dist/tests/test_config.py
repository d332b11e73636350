"""TrainConfig: defaults, derived fields, JSON round trip and loud validation errors."""

import json
import re

import pytest

from tinylm.dist import TrainConfig


def test_defaults_are_valid_and_checkpoint_interval_follows_eval_interval():
    cfg = TrainConfig()
    assert cfg.checkpoint_interval == cfg.eval_interval
    assert TrainConfig(eval_interval=50).checkpoint_interval == 50
    assert TrainConfig(eval_interval=50, checkpoint_interval=7).checkpoint_interval == 7


def test_json_round_trip():
    cfg = TrainConfig(
        max_steps=5, sample_prompts=["Once"], schedule="wsd", device="cuda:1", sample_top_k=None
    )
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown train config keys \['learning_rate'\].*allowed: .*lr"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("max_steps", 0, "a positive integer"),
        ("batch_size", 2.5, "a positive integer"),
        ("grad_accum_steps", True, "a positive integer"),
        ("warmup_steps", -1, "an integer >= 0"),
        ("lr", 0.0, "a number > 0"),
        ("lr", "3e-4", "a number > 0"),  # YAML 1.1 reads 3e-4 as a string
        ("min_lr", 1.0, r"a number in \[0, lr=0.0003\]"),
        ("schedule", "step", "one of constant, cosine, linear, wsd"),
        ("decay_fraction", 0.0, r"a number in \(0, 1\]"),
        ("decay_shape", "cosine", "one of linear, sqrt"),
        ("beta2", 1.0, r"a number in \[0, 1\)"),
        ("grad_clip", -1.0, "a number >= 0"),
        ("dtype", "fp16", "one of float32, bfloat16, float16"),
        ("device", "gpu", "auto, cpu, cuda, cuda:N or mps"),
        ("device", "cuda:x", "auto, cpu, cuda, cuda:N or mps"),
        ("checkpoint_interval", 0, "a positive integer"),
        ("sample_top_k", 0, "a positive integer or None"),
        ("sample_prompts", "Once upon", "a list of strings"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=rf"train\.{field} must be {allowed}, got {re.escape(repr(value))}"):
        TrainConfig(**{field: value})
