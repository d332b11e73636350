"""Static cache: fixed shapes, a clear error when full, and a decode step that compiles to one graph."""

from __future__ import annotations

import pytest
import torch

from tinylm.cache import StaticCache
from tinylm.cache.conformance import tiny_model
from tinylm.cache.static import decode_step, static_greedy_generate
from tinylm.core.generate import generate


def test_buffers_keep_their_shape_and_overflow_is_a_clear_error() -> None:
    model = tiny_model()
    c = model.config
    cache = StaticCache(2, 8, c.n_layers, c.n_kv_heads, c.head_dim, dtype=torch.float64)
    before = [k.data_ptr() for k in cache.keys]
    model(torch.randint(0, 97, (2, 6)), cache=cache)
    assert [k.data_ptr() for k in cache.keys] == before and cache.keys[0].shape == (2, 2, 8, 16)
    assert cache.memory_bytes() == 2 * 2 * (2 * 2 * 8 * 16) * 8
    with pytest.raises(ValueError, match="holds 8 positions; 6 stored \\+ 3 new"):
        model(torch.randint(0, 97, (2, 3)), cache=cache)
    with pytest.raises(ValueError, match="built for batch 2"):
        model(torch.randint(0, 97, (1, 1)), cache=cache)


def test_eager_decode_step_matches_generate() -> None:
    model = tiny_model()
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    ref = generate(model, prompt, 12, temperature=0.0, use_cache=False)
    assert torch.equal(static_greedy_generate(model, prompt, 12), ref)


def test_compiled_decode_step_is_one_graph_without_recompiles() -> None:
    model = tiny_model().float()
    prompt = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(4))
    ref = generate(model, prompt, 8, temperature=0.0, use_cache=False)
    torch._dynamo.reset()
    compiled = torch.compile(decode_step, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = static_greedy_generate(model, prompt, 8, step_fn=compiled)
    assert torch.equal(out, ref)


def test_fast_greedy_decoder_on_a_fused_model_matches_recomputation() -> None:
    from tinylm.cache.fast_decode import compile_greedy_step, fast_greedy_generate, greedy_step
    from tinylm.core.fusion import fuse_projections

    model = tiny_model().float()
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(5))
    ref = generate(model, prompt, 10, temperature=0.0, use_cache=False)
    assert fuse_projections(model) > 0
    c = model.config
    cache = StaticCache(2, 14, c.n_layers, c.n_kv_heads, c.head_dim)
    assert torch.equal(fast_greedy_generate(model, prompt, 10, greedy_step, cache), ref)  # eager
    torch._dynamo.reset()
    step = compile_greedy_step("cpu", backend="aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert torch.equal(fast_greedy_generate(model, prompt, 10, step, cache), ref)
        assert torch.equal(fast_greedy_generate(model, prompt, 10, step, cache), ref)  # cache reused


@pytest.mark.parametrize(("k", "new"), [(1, 6), (3, 10), (4, 2), (5, 9)])
def test_k_steps_per_graph_match_recomputation(k, new) -> None:
    """``GraphedGreedySteps`` uncaptured (CPU): the same k-step runs the GPU records; token counts that are
    not a multiple of k drop the extra tokens."""
    from tinylm.cache.fast_decode import GraphedGreedySteps, compile_greedy_step, graphed_greedy_stream

    model = tiny_model().float()
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(8))
    ref = generate(model, prompt, new, temperature=0.0, use_cache=False)
    c = model.config
    cache = StaticCache(2, 4 + k * -(-(new - 1) // k), c.n_layers, c.n_kv_heads, c.head_dim)  # just enough
    torch._dynamo.reset()
    step = compile_greedy_step("cpu", backend="aot_eager", cudagraphs=False)
    graphed = GraphedGreedySteps(model, cache, k, step)
    graphed.capture()  # a no-op off a GPU
    for _ in range(2):  # the cache is reset and reused
        toks = list(graphed_greedy_stream(model, prompt, new, graphed))
        assert len(toks) == new
        assert torch.equal(torch.cat([prompt, torch.stack(toks, 1)], 1), ref)


def test_k_steps_per_graph_errors() -> None:
    from tinylm.cache.fast_decode import GraphedGreedySteps, fast_greedy, graphed_greedy_stream, greedy_step

    model = tiny_model().float()
    c = model.config
    cache = StaticCache(1, 11, c.n_layers, c.n_kv_heads, c.head_dim)
    with pytest.raises(ValueError, match="at least 1"):
        GraphedGreedySteps(model, cache, 0, greedy_step)
    graphed = GraphedGreedySteps(model, cache, 4, greedy_step)
    with pytest.raises(ValueError, match="needs 12 cache positions, the cache has 11"):
        list(graphed_greedy_stream(model, torch.zeros(1, 4, dtype=torch.long), 6, graphed))
    prompt = torch.randint(0, 97, (1, 3), generator=torch.Generator().manual_seed(9))
    ref = generate(model, prompt, 9, temperature=0.0, use_cache=False)[0, 3:]  # exactly fills 3 + 2 * 4
    assert torch.equal(torch.cat(list(graphed_greedy_stream(model, prompt, 9, graphed))), ref)
    prompt = torch.randint(0, 97, (1, 3), generator=torch.Generator().manual_seed(9))
    ref = generate(model, prompt, 7, temperature=0.0, use_cache=False)[0, 3:]
    assert torch.equal(torch.cat(list(fast_greedy(model, prompt, 7, steps_per_graph=3))), ref)
    with pytest.raises(ValueError, match="steps_per_graph must be >= 1, got 0"):
        fast_greedy(model, prompt, 7, steps_per_graph=0)


def test_k_steps_per_graph_stop_at_a_learned_position_models_context() -> None:
    """Generating up to the last position of a model with learned positions: no replay runs past it."""
    from tinylm.cache.fast_decode import fast_greedy

    model = tiny_model(positional="learned", max_seq_len=16).float()
    prompt = torch.randint(0, 97, (2, 3), generator=torch.Generator().manual_seed(4))
    ref = generate(model, prompt, 13, temperature=0.0, use_cache=False)[:, 3:]
    for k in (1, 4, 5, 12):
        assert torch.equal(torch.stack(list(fast_greedy(model, prompt, 13, steps_per_graph=k)), 1), ref), k
    with pytest.raises(
        ValueError, match=r"3 tokens \+ 14 new tokens is longer than the model's context \(16"
    ):
        fast_greedy(model, prompt, 14, steps_per_graph=4)  # before any compiling or capturing


def test_inductor_options_are_checked_by_name() -> None:
    from tinylm.cache.fast_decode import (
        check_inductor_options,
        compile_greedy_step,
        fast_greedy,
        parse_inductor_options,
    )

    check_inductor_options({"combo_kernels": True, "triton.enable_pdl": True, "coordinate_descent_tuning": 1})
    assert parse_inductor_options("combo_kernels=True;triton.enable_pdl=True;;") == {
        "combo_kernels": True,
        "triton.enable_pdl": True,
    }
    assert parse_inductor_options(["combo_kernels_autotune=0"]) == {"combo_kernels_autotune": 0}
    with pytest.raises(ValueError, match="unknown Inductor setting 'combo'"):
        parse_inductor_options("combo=True")
    for bad in ("combo_kernel", "triton.enable_pld"):
        with pytest.raises(ValueError, match=f"unknown Inductor setting '{bad}'.*torch._inductor.config"):
            compile_greedy_step("cpu", inductor_options={bad: True})
    model = tiny_model().float()
    with pytest.raises(ValueError, match="unknown Inductor setting 'nope'"):  # checked off a GPU too
        fast_greedy(model, torch.zeros(1, 3, dtype=torch.long), 4, inductor_options={"nope": 1})


def test_math_decode_attention_compiles_and_rejects_unknown_names() -> None:
    from tinylm.cache.fast_decode import compile_greedy_step, fast_greedy_generate

    model = tiny_model().float()
    c = model.config
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        StaticCache(1, 8, c.n_layers, c.n_kv_heads, c.head_dim, decode_attention="flash")
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(10))
    ref = generate(model, prompt, 10, temperature=0.0, use_cache=False)
    for attention in ("math", "kernel", "kernel_rope"):
        cache = StaticCache(2, 14, c.n_layers, c.n_kv_heads, c.head_dim, decode_attention=attention)
        torch._dynamo.reset()
        step = compile_greedy_step("cpu", backend="aot_eager")
        with torch._dynamo.config.patch(error_on_recompile=True):
            assert torch.equal(fast_greedy_generate(model, prompt, 10, step, cache), ref), attention
            assert torch.equal(fast_greedy_generate(model, prompt, 10, step, cache), ref), attention


@pytest.mark.parametrize("pos_kind", ["rope", "learned"])
def test_kernel_rope_rotates_in_the_op_and_matches_the_kernel_path(monkeypatch, pos_kind: str) -> None:
    """``kernel_rope``: each decode step of each layer goes through one ``rope_decode_attention`` with q/k
    unrotated, and the logits equal those of ``kernel`` (rotate, store, attend); without RoPE (learned
    positions) the hook declines and the ``kernel`` path runs."""
    import tinylm.cache.static as static

    model = tiny_model(positional="learned") if pos_kind == "learned" else tiny_model()
    c = model.config
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(5))
    calls = []
    real = static.rope_decode_attention
    monkeypatch.setattr(static, "rope_decode_attention", lambda *a: calls.append(1) or real(*a))
    logits = {}
    for attention in ("kernel", "kernel_rope"):
        cache = StaticCache(2, 12, c.n_layers, c.n_kv_heads, c.head_dim, dtype=torch.float64,
                            decode_attention=attention)  # fmt: skip
        model(prompt, cache=cache)
        steps = []
        tok = prompt[:, -1:]
        for i in range(4):
            pos = torch.full((2, 1), 5 + i)
            steps.append(decode_step(model, cache, tok, pos))
            cache.advance(1)
            tok = steps[-1][:, -1].argmax(-1, keepdim=True)
        logits[attention] = torch.cat(steps, 1)
    assert len(calls) == (4 * c.n_layers if pos_kind == "rope" else 0)
    torch.testing.assert_close(logits["kernel_rope"], logits["kernel"], rtol=1e-10, atol=1e-10)
