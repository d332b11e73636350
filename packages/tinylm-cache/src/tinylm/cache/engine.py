"""A continuous-batching engine over the paged cache (after vLLM's and Orca's schedulers).

Requests arrive at any time (``add_request``) with their own sampling parameters and token limit. Each
``step`` first makes room for one more token of every running sequence (preempting the most recently
admitted ones when the block pool is short: their blocks are freed, they go back to the front of the
queue with what they generated, and resume later by recomputation, mostly from their own still-cached
prefix blocks), then admits waiting requests while the token budget and the pool allow (one prefill each,
sharing cached prompt prefixes, which yields their first token), then runs one batched decode for the
sequences that were already running (on CUDA through the paged decode kernel: see ``PagedCache``).
Finished sequences free their blocks at once. ``stream`` yields
``(request_id, token)`` as tokens are produced; ``run`` returns every request's tokens.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from tinylm.cache.block_allocator import PoolExhaustedError
from tinylm.cache.paged import PagedCache
from tinylm.core.generate import sample_next


@dataclass
class Request:
    """One generation request and its progress."""

    request_id: int
    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: tuple[int, ...] = ()
    generator: torch.Generator | None = None
    output: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def finished(self) -> bool:
        return len(self.output) >= self.max_new_tokens or bool(
            self.output and self.output[-1] in self.stop_tokens
        )


@dataclass
class EngineStats:
    """Counters over the engine's lifetime."""

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    peak_running: int = 0


class Engine:
    """Serve many requests through one model and one ``PagedCache``."""

    def __init__(
        self,
        model: torch.nn.Module,
        num_blocks: int = 512,
        block_size: int = 8,  # < 2% waste on mixed lengths (16: ~3%); see PagedCache's docstring
        max_batch: int = 32,
        token_budget: int = 512,
        attention_kernel: str = "auto",
    ) -> None:
        if max_batch < 1 or token_budget < 1:
            raise ValueError(f"max_batch and token_budget must be >= 1, got {max_batch}, {token_budget}")
        p = next(model.parameters())
        c = model.config
        self.model = model.eval()
        self.cache = PagedCache(
            c.n_layers, c.n_kv_heads, c.head_dim, num_blocks, block_size, device=p.device, dtype=p.dtype,
            attention_kernel=attention_kernel,
        )  # fmt: skip
        self.device = p.device
        self.max_batch, self.token_budget = max_batch, token_budget
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.finished: dict[int, Request] = {}
        self.stats = EngineStats()
        self._next_id = 0

    def add_request(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] = (),
        seed: int | None = None,
    ) -> int:
        """Queue a request; returns its id. ``seed`` makes its sampling reproducible on its own."""
        if not prompt or max_new_tokens < 1:
            raise ValueError(f"need a non-empty prompt and max_new_tokens >= 1, got {len(prompt)} tokens")
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        req = Request(self._next_id, list(prompt), max_new_tokens, temperature, top_k, top_p,
                      tuple(stop_tokens), gen)  # fmt: skip
        self._next_id += 1
        self.waiting.append(req)
        return req.request_id

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _sample(self, req: Request, logits: torch.Tensor) -> int:
        return int(sample_next(logits[None], req.temperature, req.top_k, req.top_p, req.generator)[0])

    def _sample_rows(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        """One token per row of ``logits`` (B, vocab): greedy rows by one argmax and one device sync for
        the whole batch, sampled rows one by one (each with its own generator)."""
        tokens = logits.argmax(-1).tolist()
        for row, req in enumerate(reqs):
            if req.temperature > 0:
                tokens[row] = self._sample(req, logits[row])
        return tokens

    def _emit(self, req: Request, token: int, events: list[tuple[int, int]]) -> None:
        req.output.append(token)
        events.append((req.request_id, token))

    def _preempt(self, req: Request) -> None:
        self.cache.publish_prefix(req.request_id, req.tokens)  # its full blocks stay findable once freed
        self.cache.free_sequence(req.request_id)
        self.running.remove(req)
        self.waiting.appendleft(req)
        self.stats.preemptions += 1

    def _reserve_decode_room(self) -> None:
        while self.running:
            need = sum(self.cache.blocks_needed(r.request_id, 1) for r in self.running)
            if need <= self.cache.allocator.num_free:
                return
            self._preempt(self.running[-1])

    def _admit(self, budget: int, events: list[tuple[int, int]]) -> list[Request]:
        admitted: list[Request] = []
        reserved = sum(self.cache.blocks_needed(r.request_id, 1) for r in self.running)
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            req = self.waiting[0]
            tokens = req.tokens
            cached = self.cache.add_sequence(req.request_id, tokens)
            cost = len(tokens) - cached
            blocks = self.cache.blocks_needed(req.request_id, cost)
            busy = bool(self.running or admitted)
            if (cost > budget and busy) or blocks > self.cache.allocator.num_free - reserved:
                self.cache.free_sequence(req.request_id)
                if not busy:
                    raise PoolExhaustedError(
                        f"request {req.request_id} needs {blocks} blocks of {self.cache.block_size} tokens "
                        f"but the pool has {self.cache.allocator.num_blocks}; build the engine with more "
                        "num_blocks or shorten the request"
                    )
                break
            self.waiting.popleft()
            self.cache.set_batch([req.request_id])
            ids = torch.tensor([tokens[cached:]], device=self.device)
            pos = torch.arange(cached, len(tokens), device=self.device)[None]
            logits = self.model(ids, positions=pos, cache=self.cache).logits[0, -1]
            self.cache.publish_prefix(req.request_id, tokens)
            self.stats.prefill_tokens += cost
            budget -= cost
            self._emit(req, self._sample(req, logits), events)
            admitted.append(req)
        return admitted

    @torch.no_grad()
    def step(self) -> list[tuple[int, int]]:
        """One scheduling step; returns the ``(request_id, token)`` pairs it produced."""
        events: list[tuple[int, int]] = []
        self._reserve_decode_room()
        decoding = list(self.running)
        admitted = self._admit(self.token_budget - len(decoding), events)
        if decoding:
            self.cache.set_batch([r.request_id for r in decoding])
            ids = torch.tensor([[r.output[-1]] for r in decoding], device=self.device)  # (B, 1)
            pos = torch.tensor([[len(r.prompt) + len(r.output) - 1] for r in decoding], device=self.device)
            logits = self.model(ids, positions=pos, cache=self.cache).logits[:, -1]  # (B, vocab)
            for req, token in zip(decoding, self._sample_rows(decoding, logits), strict=True):
                self._emit(req, token, events)
            self.stats.decode_tokens += len(decoding)
        self.running += admitted
        self.stats.peak_running = max(self.stats.peak_running, len(self.running))
        for req in [r for r in self.running if r.finished]:
            self.cache.free_sequence(req.request_id)
            self.running.remove(req)
            self.finished[req.request_id] = req
        self.stats.steps += 1
        return events

    def stream(self) -> Iterator[tuple[int, int]]:
        """``(request_id, token)`` as produced, until every queued request is finished."""
        while self.has_work:
            yield from self.step()

    def run(self) -> dict[int, list[int]]:
        """Serve everything queued; each request id's generated tokens."""
        for _ in self.stream():
            pass
        return {i: r.output for i, r in sorted(self.finished.items())}
