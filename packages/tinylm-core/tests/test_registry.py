"""Registry behaviour, and adding a component with one class + one decorator (no other edits)."""

import pytest
import torch
from torch import nn

from tinylm.core import ATTENTION_BACKENDS, NORMS, Registry, TinyLM, UnknownNameError
from tinylm.core.components.attention import eager_attention


def test_unknown_name_lists_known_names():
    r = Registry("widget")
    r.register("a")(int)
    r.register("b")(float)
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; known widget names: a, b") as e:
        r.get("c")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert r.build("a", "3") == 3 and "a" in r and list(r) == ["a", "b"]


def test_duplicate_registration_raises():
    r = Registry("widget")
    r.register("a")(int)
    with pytest.raises(KeyError, match="already registered"):
        r.register("a")(float)


def test_new_norm_is_one_decorator(tiny_model):
    @NORMS.register("scalenorm_test")
    class ScaleNorm(nn.Module):
        """ScaleNorm (Nguyen & Salazar, 2019): g * x / ||x||."""

        def __init__(self, dim, eps=1e-5, bias=False):
            super().__init__()
            self.g = nn.Parameter(torch.tensor(dim**0.5))
            self.eps = eps

        def forward(self, x):
            return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)

    try:
        model = tiny_model(norm="scalenorm_test")
        assert isinstance(model.layers[0].attn_norm, ScaleNorm) and isinstance(model.norm, ScaleNorm)
        out = model(torch.randint(0, 97, (2, 5)), labels=torch.randint(0, 97, (2, 5)))
        out.loss.backward()
        assert model.layers[0].attn_norm.g.grad is not None
    finally:
        NORMS.unregister("scalenorm_test")


def test_new_attention_backend_is_one_decorator(ids, tiny_model):
    calls = []

    @ATTENTION_BACKENDS.register("counting_test")
    def counting(q, k, v, mask, dropout_p, scale):
        calls.append(q.shape)
        return eager_attention(q, k, v, mask, dropout_p, scale)

    try:
        ref = tiny_model(attention="eager")
        model = TinyLM(ref.config, attention="counting_test").eval()
        model.load_state_dict(ref.state_dict())
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
        assert len(calls) == 2
    finally:
        ATTENTION_BACKENDS.unregister("counting_test")
