"""A tiny, honest C2C demonstration: a sharer that memorised a synthetic fact table helps a receiver that
never saw it, through its KV cache alone.

Sequences are ``BOS Q e H x ? a``: entity ``e``, a hint slot ``x``, answer ``a``. The sharer is trained on
``x = NONE`` with ``a = fact(e)`` (it learns the table). The receiver is trained to copy the hint
(``x = a`` for random, unrelated ``e`` and ``a``) and, on ``x = NONE``, to answer at random: alone it is at
chance. Compared on every entity of the table: the receiver alone, the sharer alone, the receiver with the
sharer's answer relayed as a text hint, and C2C (the receiver over the fused cache of ``BOS Q e H NONE``).
``run_c2c_demo`` trains all three parts (tqdm bars) and returns accuracies, latencies and learned gates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from tinylm.cache.c2c import C2CFuser, c2c_generate, c2c_loss
from tinylm.core import TinyLM
from tinylm.core.generate import generate

BOS, Q, H, NONE, QMARK = 1, 2, 3, 4, 5
FIRST_ENTITY = 8


class FactTask:
    """``n_entities`` entities, each mapped to one of ``n_values`` answers by a seeded random table."""

    def __init__(self, n_entities: int = 48, n_values: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.entities = torch.arange(FIRST_ENTITY, FIRST_ENTITY + n_entities)
        self.values = torch.arange(FIRST_ENTITY + n_entities, FIRST_ENTITY + n_entities + n_values)
        self.facts = self.values[torch.randint(0, n_values, (n_entities,), generator=g)]
        self.vocab_size = FIRST_ENTITY + n_entities + n_values
        self.context_len = 6  # BOS Q e H x ?

    def sequences(self, e: torch.Tensor, hint: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        """``(N, 7)`` token rows ``BOS Q e H hint ? answer``."""
        n = e.numel()
        cols = [torch.full((n,), BOS), torch.full((n,), Q), e, torch.full((n,), H), hint,
                torch.full((n,), QMARK), answer]  # fmt: skip
        return torch.stack(cols, dim=1)

    def sharer_batch(self, n: int, g: torch.Generator) -> torch.Tensor:
        i = torch.randint(0, len(self.entities), (n,), generator=g)
        return self.sequences(self.entities[i], torch.full((n,), NONE), self.facts[i])

    def receiver_batch(self, n: int, g: torch.Generator) -> torch.Tensor:
        e = self.entities[torch.randint(0, len(self.entities), (n,), generator=g)]
        a = self.values[torch.randint(0, len(self.values), (n,), generator=g)]
        with_hint = torch.rand(n, generator=g) < 0.5
        return self.sequences(e, torch.where(with_hint, a, torch.full_like(a, NONE)), a)

    def questions(self, hint: torch.Tensor | None = None) -> torch.Tensor:
        """Every entity's context ``BOS Q e H hint ?`` (``hint`` defaults to NONE)."""
        n = len(self.entities)
        hint = torch.full((n,), NONE) if hint is None else hint
        return self.sequences(self.entities, hint, self.facts)[:, : self.context_len]


def train(
    params: list[torch.nn.Parameter], loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float, desc: str
) -> list[float]:
    """AdamW on ``params`` for ``steps`` steps of ``loss_fn(step)``; the loss curve."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for step in (bar := tqdm(range(steps), desc=desc, leave=False)):
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def answer_loss(model: TinyLM, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answer token only."""
    logits = model(rows[:, :-1]).logits[:, -1]
    return torch.nn.functional.cross_entropy(logits, rows[:, -1])


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """Result and milliseconds (median of 5 runs after one warm-up; device synchronised)."""
    fn()
    times = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, sorted(times)[2]


def run_c2c_demo(
    device: str | torch.device = "cpu", lm_steps: int = 600, fuser_steps: int = 400, seed: int = 0
) -> dict[str, Any]:
    """Train sharer, receiver and fuser; the comparison table's numbers, loss curves and gates."""
    device = torch.device(device)
    task = FactTask(seed=seed)
    g = torch.Generator().manual_seed(seed)
    cfg = dict(vocab_size=task.vocab_size, dim=96, n_layers=3, n_heads=4, max_seq_len=16)
    torch.manual_seed(seed)
    sharer, receiver = TinyLM(**cfg).to(device), TinyLM(**{**cfg, "n_layers": 2}).to(device)

    def lm_loss(model: TinyLM, batch: Callable[[int, torch.Generator], torch.Tensor]) -> Callable:
        return lambda step: answer_loss(model, batch(64, g).to(device))

    curves = {
        "sharer": train(
            list(sharer.parameters()), lm_loss(sharer, task.sharer_batch), lm_steps, 3e-3, "sharer"
        ),
        "receiver": train(
            list(receiver.parameters()), lm_loss(receiver, task.receiver_batch), lm_steps, 3e-3, "receiver"
        ),
    }
    for m in (sharer, receiver):
        m.eval().requires_grad_(False)
    fuser = C2CFuser(receiver.config, sharer.config, hidden=128).to(device)

    def fuser_step(step: int) -> torch.Tensor:
        fuser.temperature = max(0.1, 1.0 - 0.9 * step / max(1, fuser_steps - 1))  # anneal 1 -> 0.1
        return c2c_loss(receiver, sharer, fuser, task.sharer_batch(64, g).to(device), task.context_len)

    fuser.train()
    curves["fuser"] = train(list(fuser.parameters()), fuser_step, fuser_steps, 2e-3, "c2c fuser")
    fuser.eval()

    questions, facts = task.questions().to(device), task.facts.to(device)

    def answer(model: TinyLM, ctx: torch.Tensor) -> torch.Tensor:
        return generate(model, ctx, 1, temperature=0.0)[:, -1]

    def relay() -> torch.Tensor:
        hint = answer(sharer, questions)
        return answer(receiver, task.questions(hint.cpu()).to(device))

    runs = {
        "receiver alone": lambda: answer(receiver, questions),
        "sharer alone": lambda: answer(sharer, questions),
        "text relay (sharer answer as hint)": relay,
        "C2C (fused cache)": lambda: c2c_generate(receiver, sharer, fuser, questions, 1, temperature=0.0)[
            :, -1
        ],
    }
    rows = []
    for name, fn in runs.items():
        pred, ms = timed(fn, device)
        rows.append({"method": name, "accuracy": (pred == facts).float().mean().item(), "latency_ms": ms})
    return {
        "rows": rows,
        "chance": 1 / len(task.values),
        "gates": torch.sigmoid(fuser.gate_logits).tolist(),
        "hard_gates": fuser.gates().tolist(),
        "curves": curves,
        "n_questions": len(task.entities),
        "device": str(device),
    }
