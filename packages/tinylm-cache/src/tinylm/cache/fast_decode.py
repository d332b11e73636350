"""Fast greedy decoding: the whole decode step, sampling included, in one CUDA graph that Inductor tuned.

``compile_greedy_step()`` returns ``step(model, cache, tokens) -> next tokens`` for a ``StaticCache``,
compiled with ``torch.compile`` (CUDA graphs on a GPU) around ``greedy_step``. What it does beyond
``torch.compile(decode_step, mode="reduce-overhead")``, each measured in ``benchmarks/decode_speed.py``:

- the argmax runs inside the graph and the positions are read from the cache's device counter, so a token
  costs one graph replay plus the counter's increment, not extra eager launches;
- ``inductor_kernels``: RMSNorm, RoPE, SwiGLU and the int8 linear use their plain-PyTorch backends while
  compiling (``tinylm.kernels.preferring``), which Inductor fuses with their neighbours (the residual add
  into the norm, RoPE into the KV-cache write, the int8 dequantization into the matrix-vector product);
  the hand-written kernels are one opaque launch each;
- ``tune``: Inductor's coordinate-descent tuning of the generated kernels (gpt-fast turns it on too).

Fuse the model's projections first for fewer launches (``tinylm.core.fusion.fuse_projections``). Rows of a
batch must share one length (no padding): positions come from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from tinylm.cache.static import StaticCache, decode_step, model_cache_shape
from tinylm.core.fusion import fuse_projections
from tinylm.kernels import preferring

FUSABLE = {"rms_norm": "torch", "rope": "torch", "swiglu": "torch", "int8_linear": "torch"}


def greedy_step(model: Any, cache: StaticCache, tokens: torch.Tensor) -> torch.Tensor:
    """The next tokens ``(B, 1)`` after ``tokens`` ``(B, 1)``, written at the cache's position."""
    positions = cache.position.expand(tokens.shape[0], 1)
    return decode_step(model, cache, tokens, positions)[:, -1].argmax(-1, keepdim=True)


def compile_greedy_step(
    device: torch.device | str = "cuda",
    inductor_kernels: bool = True,
    tune: bool = True,
    backend: str = "inductor",
    prefer: dict[str, str] | None = None,
) -> Any:
    """``greedy_step`` compiled once for fixed shapes (CUDA graphs on a GPU); call it like ``greedy_step``.

    The returned tokens are a copy, so they survive the next replay of the graph. ``backend``: another
    ``torch.compile`` backend (tests use ``aot_eager``); the Inductor options apply to Inductor only.
    ``prefer``: kernel backends by op (``tinylm.kernels.preferring``) over the ``inductor_kernels`` choice,
    e.g. ``{"int8_linear": "triton"}`` for the hand-written int8 GEMV.
    """
    cuda = torch.device(device).type == "cuda"
    options = (
        {"triton.cudagraphs": cuda, "coordinate_descent_tuning": tune} if backend == "inductor" else None
    )
    compiled = torch.compile(greedy_step, backend=backend, fullgraph=True, dynamic=False, options=options)
    choices = {**(FUSABLE if inductor_kernels else {}), **(prefer or {})}

    def step(model: Any, cache: StaticCache, tokens: torch.Tensor) -> torch.Tensor:
        # every call, not only the first: the compiled code guards on the preference, so a call without it
        # would recompile with the other kernels
        with preferring(choices):
            return compiled(model, cache, tokens).clone()

    return step


@torch.no_grad()
def fast_greedy_stream(
    model: Any, input_ids: torch.Tensor, max_new_tokens: int, step: Any, cache: StaticCache
) -> Iterator[torch.Tensor]:
    """Yield each new token ``(B,)``: one prefill of ``input_ids`` ``(B, P)``, then ``step`` per token.

    ``step`` comes from ``compile_greedy_step`` (or is ``greedy_step`` itself, eager); ``cache`` is reset
    first and reused, as CUDA graphs need the same buffers each time.
    """
    if input_ids.shape[1] + max_new_tokens > cache.max_seq_len:
        raise ValueError(
            f"prompt of {input_ids.shape[1]} tokens + {max_new_tokens} new is more than the cache's "
            f"{cache.max_seq_len} positions"
        )
    cache.reset()
    nxt = model(input_ids, cache=cache).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    for i in range(max_new_tokens):
        yield nxt[:, 0]
        if i + 1 < max_new_tokens:
            nxt = step(model, cache, nxt)
            cache.advance(1)


def fast_greedy_generate(
    model: Any, input_ids: torch.Tensor, max_new_tokens: int, step: Any, cache: StaticCache
) -> torch.Tensor:
    """``input_ids`` ``(B, P)`` followed by ``max_new_tokens`` greedy tokens (see ``fast_greedy_stream``)."""
    new = list(fast_greedy_stream(model, input_ids, max_new_tokens, step, cache))
    return torch.cat([input_ids, *(t[:, None] for t in new)], dim=1)


def fast_greedy(model: Any, input_ids: torch.Tensor, max_new_tokens: int) -> Iterator[torch.Tensor]:
    """The whole recipe in one call: fuse the projections (unless the model is quantized, which keeps them
    apart), a static cache for ``input_ids`` ``(B, P)`` + ``max_new_tokens``, the compiled step on a GPU
    (the eager ``greedy_step`` elsewhere); yields each new token ``(B,)`` like ``fast_greedy_stream``."""
    try:
        fuse_projections(model)
    except TypeError:
        pass  # quantized or wrapped projections: decoded as they are
    param = next(model.parameters())
    b, p = input_ids.shape
    cache = StaticCache(b, p + max_new_tokens, device=param.device, dtype=param.dtype,
                        **model_cache_shape(model.config))  # fmt: skip
    cache.mark_static_addresses()
    step = compile_greedy_step(param.device) if param.device.type == "cuda" else greedy_step
    return fast_greedy_stream(model, input_ids.to(param.device), max_new_tokens, step, cache)
