"""Decode steps of the paged cache through tinylm-kernels' ``paged_decode_attention`` instead of gathering.

In this process the op runs its PyTorch reference (``attention_kernel="always"``), which checks the wiring:
block tables, lengths, GQA, the Attention module's ``attend`` hook. The Triton kernel itself runs in a
subprocess under ``TRITON_INTERPRET=1`` (``auto`` mode picks it there, as it does on CUDA), where the same
greedy tokens as full recomputation are required.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinylm.cache.paged as paged_module
from tinylm.cache import Engine, PagedCache
from tinylm.cache.conformance import tiny_model
from tinylm.core.generate import generate, pad_prompts
from tinylm.kernels import choose
from tinylm.kernels.triton_support import HAS_TRITON, INTERPRETED

CUDA = torch.cuda.is_available()


@pytest.fixture
def kernel_calls(monkeypatch) -> list[int]:
    """Counts the decode steps (per layer) that ran ``paged_decode_attention``."""
    calls: list[int] = []
    real = paged_module.paged_decode_attention

    def counting(q, *args, **kw):
        calls.append(q.shape[0])
        return real(q, *args, **kw)

    monkeypatch.setattr(paged_module, "paged_decode_attention", counting)
    return calls


def make(model, mode: str, num_blocks: int = 48, block_size: int = 4) -> PagedCache:
    c = model.config
    p = next(model.parameters())
    return PagedCache(c.n_layers, c.n_kv_heads, c.head_dim, num_blocks, block_size, dtype=p.dtype,
                      attention_kernel=mode)  # fmt: skip


def test_decode_steps_through_the_op_match_full_forward(kernel_calls) -> None:
    model = tiny_model()  # 4 heads over 2 kv heads: GQA
    ids = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(5))
    full = model(ids).logits
    cache = make(model, "always", block_size=3)
    with torch.no_grad():
        got = [model(ids[:, :7], cache=cache).logits]
        got += [model(ids[:, t : t + 1], cache=cache).logits for t in range(7, 15)]
    torch.testing.assert_close(torch.cat(got, 1), full, atol=1e-9, rtol=0)
    assert len(kernel_calls) == 8 * model.config.n_layers  # every decode step, no prefill


def test_engine_through_the_op_equals_each_request_alone(kernel_calls) -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(7)
    reqs = [(torch.randint(0, 97, (n,), generator=g).tolist(), m) for n, m in ((5, 9), (11, 4), (2, 12))]
    reqs.append(([*reqs[1][0][:8], 3, 1], 6))  # shares request 1's first blocks
    engine = Engine(model, num_blocks=40, block_size=4, max_batch=4, attention_kernel="always")
    ids = [engine.add_request(p, n) for p, n in reqs]
    out = engine.run()
    for rid, (p, n) in zip(ids, reqs, strict=True):
        ref = generate(model, torch.tensor([p]), n, temperature=0.0, use_cache=False)[0, len(p) :].tolist()
        assert out[rid] == ref, f"request {rid}"
    assert kernel_calls and max(kernel_calls) > 1  # ragged batched decode steps went through the op


def test_left_padded_generate_declines_the_kernel(kernel_calls) -> None:
    """A plain ``generate`` batch with left padding: the kernel would attend to the padding, so the cache
    falls back to the gather path with the model's mask (and the tokens stay exact)."""
    model = tiny_model(seed=3)
    g = torch.Generator().manual_seed(3)
    ids, mask = pad_prompts([torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 8)], pad_id=0)
    kw = dict(temperature=0.0, attention_mask=mask)
    ref = generate(model, ids, 10, use_cache=False, **kw)
    assert torch.equal(generate(model, ids, 10, cache=make(model, "always"), **kw), ref)
    assert not kernel_calls


def test_modes() -> None:
    model = tiny_model()
    assert not make(model, "never").uses_decode_kernel(torch.device("cpu"))
    assert make(model, "always").uses_decode_kernel(torch.device("cpu"))
    auto = choose("paged_decode_attention", device="cpu").name != "torch"
    assert make(model, "auto").uses_decode_kernel(torch.device("cpu")) == auto
    with pytest.raises(ValueError, match="attention_kernel must be one of auto, always, never"):
        make(model, "fast")


@pytest.mark.skipif(not (INTERPRETED or CUDA), reason="runs in the interpreter subprocess (or on CUDA)")
def test_triton_kernel_greedy_tokens_equal_recomputation(kernel_calls) -> None:
    """``auto`` mode with the Triton kernel (interpreted on CPU, compiled on CUDA): same greedy tokens."""
    device = "cpu" if INTERPRETED else "cuda"
    assert choose("paged_decode_attention", device=device).name == "triton"
    model = tiny_model().float().to(device)  # the kernel's float32 path
    prompt = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(2)).to(device)
    ref = generate(model, prompt, 10, temperature=0.0, use_cache=False)
    c = model.config
    cache = PagedCache(c.n_layers, c.n_kv_heads, c.head_dim, 16, 8, device=device, dtype=torch.float32)
    assert torch.equal(generate(model, prompt, 10, temperature=0.0, cache=cache), ref)
    assert len(kernel_calls) == 9 * c.n_layers
    kernel_calls.clear()
    engine = Engine(model, num_blocks=30, block_size=16, max_batch=4)
    g = torch.Generator().manual_seed(9)
    reqs = [(torch.randint(0, 97, (n,), generator=g).tolist(), m) for n, m in ((20, 6), (3, 10), (9, 4))]
    ids = [engine.add_request(p, n) for p, n in reqs]
    out = engine.run()
    for rid, (p, n) in zip(ids, reqs, strict=True):
        alone = generate(model, torch.tensor([p], device=device), n, temperature=0.0, use_cache=False)
        assert out[rid] == alone[0, len(p) :].tolist(), f"request {rid}"
    assert kernel_calls


@pytest.mark.skipif(INTERPRETED or CUDA or not HAS_TRITON, reason="the interpreter run itself / on CUDA")
def test_kernel_path_under_the_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("TINYLM_KERNELS_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-rA", "-p", "no:cacheprovider",
           "-k", "test_triton_kernel_greedy_tokens_equal_recomputation"]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent
    )
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]
