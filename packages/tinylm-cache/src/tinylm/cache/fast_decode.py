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

``GraphedGreedySteps`` goes one step further for small models, whose step is mostly host work (guards,
the CUDA-graph tree's checks, the Python loop; profiled at 10.6M on an H100: 136 us of GPU work in a
~300 us step): it records ``k`` consecutive steps, the feedback of each token into the next included, in
one ``torch.cuda.CUDAGraph``, so ``k`` tokens cost one replay. Greedy decoding needs no host decision
between tokens; a stop token is seen at most ``k - 1`` tokens late (the extra tokens are dropped).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from tinylm.cache.decode_blocks import fuse_decode_blocks
from tinylm.cache.static import StaticCache, decode_step, model_cache_shape
from tinylm.core.fusion import fuse_projections
from tinylm.core.generate import check_context
from tinylm.kernels import preferring

FUSABLE = {
    "rms_norm": "torch",
    "rope": "torch",
    "swiglu": "torch",
    "int8_linear": "torch",
    "int4_linear": "torch",
}


def greedy_step(model: Any, cache: StaticCache, tokens: torch.Tensor) -> torch.Tensor:
    """The next tokens ``(B, 1)`` after ``tokens`` ``(B, 1)``, written at the cache's position."""
    positions = cache.position.expand(tokens.shape[0], 1)
    return decode_step(model, cache, tokens, positions)[:, -1].argmax(-1, keepdim=True)


def parse_inductor_options(items: str | Sequence[str]) -> dict[str, Any]:
    """``"combo_kernels=True;triton.enable_pdl=True"`` (or a list of ``KEY=VALUE``) -> a checked dict.

    Values are Python literals (``True``, ``4``, ``'x'``); keys must be ``torch._inductor.config`` names.
    """
    parts = [p for p in (items.split(";") if isinstance(items, str) else items) if p]
    out = {}
    for item in parts:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"an Inductor option is KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(
                f"Inductor option {key}: {value!r} is not a Python literal (True, 4, 'x')"
            ) from None
    check_inductor_options(out)
    return out


def check_inductor_options(options: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` for a key that is not a ``torch._inductor.config`` setting.

    Nested settings are dotted: ``triton.enable_pdl``.
    """
    import torch._inductor.config as inductor_config

    for key in options or {}:
        try:
            functools.reduce(getattr, key.split("."), inductor_config)
        except AttributeError:
            raise ValueError(
                f"unknown Inductor setting {key!r}: use a name from torch._inductor.config, e.g. "
                "'combo_kernels' or 'triton.enable_pdl'"
            ) from None


def compile_greedy_step(
    device: torch.device | str = "cuda",
    inductor_kernels: bool = True,
    tune: bool = True,
    backend: str = "inductor",
    prefer: dict[str, str] | None = None,
    cudagraphs: bool | None = None,
    max_autotune: bool = False,
    inductor_options: dict[str, Any] | None = None,
) -> Any:
    """``greedy_step`` compiled once for fixed shapes (CUDA graphs on a GPU); call it like ``greedy_step``.

    The returned tokens are a copy, so they survive the next replay of the graph. ``backend``: another
    ``torch.compile`` backend (tests use ``aot_eager``); the Inductor options apply to Inductor only.
    ``prefer``: kernel backends by op (``tinylm.kernels.preferring``) over the ``inductor_kernels`` choice,
    e.g. ``{"int8_linear": "triton"}`` for the hand-written int8 GEMV. ``cudagraphs``: Inductor's own
    CUDA graph per call (default: on a GPU); ``GraphedGreedySteps`` turns it off and records its own.
    ``max_autotune``: Inductor also benchmarks Triton matmul templates against cuBLAS (slower compile;
    matters for several rows per step, as 1-row products are reductions already). ``inductor_options``:
    more ``torch._inductor.config`` settings for experiments (e.g. ``{"combo_kernels": True}``).
    """
    check_inductor_options(inductor_options)
    cuda = torch.device(device).type == "cuda"
    graphs = cuda if cudagraphs is None else cudagraphs
    options = {"triton.cudagraphs": graphs, "coordinate_descent_tuning": tune, "max_autotune": max_autotune}
    options = {**options, **(inductor_options or {})} if backend == "inductor" else None
    compiled = torch.compile(greedy_step, backend=backend, fullgraph=True, dynamic=False, options=options)
    choices = {**(FUSABLE if inductor_kernels else {}), **(prefer or {})}

    def step(model: Any, cache: StaticCache, tokens: torch.Tensor) -> torch.Tensor:
        # every call, not only the first: the compiled code guards on the preference, so a call without it
        # would recompile with the other kernels
        with preferring(choices):
            return compiled(model, cache, tokens).clone()

    return step


class GraphedGreedySteps:
    """``k`` greedy steps of ``model`` over ``cache`` per call: one CUDA-graph replay on a GPU.

    ``step``: a step from ``compile_greedy_step(..., cudagraphs=False)`` (or ``greedy_step``).
    ``capture()`` compiles (warm-up steps on a side stream, which scribble on the cache: reset it after)
    and records the ``k`` steps; until then, and off a GPU, ``run`` calls them one by one (same results).
    Set ``token`` (B, 1) to the last token and prefill the cache, then each ``run()`` returns the next
    ``k`` tokens ``(B, k)`` (overwritten by the next run) and leaves the last one in ``token``.
    """

    def __init__(self, model: Any, cache: StaticCache, k: int, step: Any) -> None:
        if k < 1:
            raise ValueError(f"k (steps per graph) must be at least 1, got {k}")
        self.model, self.cache, self.k, self.step = model, cache, k, step
        device = cache.position.device
        self.token = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.out = torch.zeros(cache.batch_size, k, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _steps(self) -> None:
        tok = self.token
        for i in range(self.k):
            tok = self.step(self.model, self.cache, tok)
            self.cache.position.add_(1)  # on the device: recorded in the graph
            self.out[:, i : i + 1].copy_(tok)
        self.token.copy_(tok)

    @torch.no_grad()
    def capture(self, warmup: int = 2) -> None:
        """Compile with ``warmup`` runs on a side stream, then record one run as a CUDA graph (GPU only)."""
        if self.token.device.type != "cuda":
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.cache.position.zero_()
                self._steps()
        torch.cuda.current_stream().wait_stream(side)
        self.cache.reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._steps()  # recorded, not run: the cache is untouched

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        """The next ``k`` tokens ``(B, k)``; the cache then holds ``k`` more positions."""
        if self.cache.get_seq_length() + self.k > self.cache.max_seq_len:
            raise ValueError(
                f"static cache holds {self.cache.max_seq_len} positions; {self.cache.get_seq_length()} "
                f"stored + {self.k} steps per graph is too many"
            )
        if self.graph is None:
            self._steps()
        else:
            self.graph.replay()
        self.cache.advance(self.k, on_device=False)  # the position moved on the device already
        return self.out


@torch.no_grad()
def graphed_greedy_stream(
    model: Any, input_ids: torch.Tensor, max_new_tokens: int, graphed: GraphedGreedySteps
) -> Iterator[torch.Tensor]:
    """Like ``fast_greedy_stream``, ``graphed.k`` tokens per replay; the cache needs room for
    ``P + k * ceil((max_new_tokens - 1) / k)`` positions (the last replay may run past the end). Where
    that replay would pass a learned-position model's context, the last tokens are single steps."""
    cache, k = graphed.cache, graphed.k
    replays = -(-(max_new_tokens - 1) // k)
    if input_ids.shape[1] + replays * k > cache.max_seq_len:
        raise ValueError(
            f"prompt of {input_ids.shape[1]} tokens + {max_new_tokens} new in steps of {k} needs "
            f"{input_ids.shape[1] + replays * k} cache positions, the cache has {cache.max_seq_len}"
        )
    cache.reset()
    nxt = model(input_ids, cache=cache).logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    yield nxt[:, 0]
    graphed.token.copy_(nxt)
    left = max_new_tokens - 1
    limit = model.pos.max_positions  # learned positions end there (None: no end)
    while left > 0:
        if left < k and limit is not None and cache.get_seq_length() + k > limit:
            # a whole replay would embed positions past the model's last one: finish step by step
            tok = graphed.token
            for _ in range(left):
                tok = graphed.step(model, cache, tok)
                cache.advance(1)
                yield tok[:, 0]
            return
        chunk = graphed.run().clone()  # (B, k): the next replay overwrites the graph's buffer
        for j in range(min(k, left)):
            yield chunk[:, j]
        left -= k


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


def fast_greedy(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    steps_per_graph: int = 1,
    inductor_options: dict[str, Any] | None = None,
    decode_attention: str = "sdpa",
    decode_blocks: str | None = None,
) -> Iterator[torch.Tensor]:
    """The whole recipe in one call: fuse the projections (unless the model is quantized, which keeps them
    apart), a static cache for ``input_ids`` ``(B, P)`` + ``max_new_tokens``, the compiled step on a GPU
    (the eager ``greedy_step`` elsewhere); yields each new token ``(B,)`` like ``fast_greedy_stream``.
    ``steps_per_graph`` > 1: that many steps per CUDA-graph replay (``GraphedGreedySteps``; it pays where
    the host is the bottleneck: small models). ``inductor_options``: as in ``compile_greedy_step`` (e.g.
    ``{"combo_kernels": True}``, a gain at 110M batch 1 on an H100, BENCHMARKS 7d). ``decode_attention``:
    the static cache's (``"kernel"``, the Triton decode kernel, pays at batch 32, BENCHMARKS 7e;
    ``"kernel_rope"`` also rotates and writes the cache in that kernel, 7g). ``decode_blocks``:
    fold small ops into the blocks' products (``tinylm.cache.decode_blocks``, ``"epilogue"`` or
    ``"prologue"``; ``"epilogue"`` with ``"kernel_rope"`` ran 110M batch 32 at 1.06-1.10x, 7h)."""
    if steps_per_graph < 1:
        raise ValueError(f"steps_per_graph must be >= 1, got {steps_per_graph}")
    check_inductor_options(inductor_options)  # here too: off a GPU the step is not compiled
    check_context(model, input_ids.shape[1], max_new_tokens)
    try:
        fuse_projections(model)
    except TypeError:
        pass  # quantized or wrapped projections: decoded as they are
    if decode_blocks is not None and fuse_decode_blocks(model, decode_blocks) == 0:
        raise ValueError(
            "decode_blocks: no block of this model can be fused (needs pre-norm RMSNorm + SwiGLU)"
        )
    prefer = {"decode_linear": "triton"} if decode_blocks is not None else None
    param = next(model.parameters())
    b, p = input_ids.shape
    cuda, k = param.device.type == "cuda", steps_per_graph
    cache = StaticCache(b, p + max_new_tokens + k, device=param.device, dtype=param.dtype,
                        decode_attention=decode_attention, **model_cache_shape(model.config))  # fmt: skip
    cache.mark_static_addresses()
    ids = input_ids.to(param.device)
    if k > 1:
        options = {"cudagraphs": False, "inductor_options": inductor_options, "prefer": prefer}
        step = compile_greedy_step(param.device, **options) if cuda else greedy_step
        graphed = GraphedGreedySteps(model, cache, k, step)
        graphed.capture()
        return graphed_greedy_stream(model, ids, max_new_tokens, graphed)
    step = (
        compile_greedy_step(param.device, inductor_options=inductor_options, prefer=prefer)
        if cuda
        else greedy_step
    )
    return fast_greedy_stream(model, ids, max_new_tokens, step, cache)
