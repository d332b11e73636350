"""Synthetic research tasks as datasets (``data=mqar|copying|induction``), with an accuracy metric.

Each task generates short documents of single characters (train with ``tokenizer=char``) in which some
characters are *answers*: predictable from the context, unlike the random rest. Training is plain
next-token prediction on whole documents; ``evaluate_task`` scores only the answers of fresh documents
(another seed), teacher-forced, so variants can be compared in minutes on a CPU.

- ``mqar``: multi-query associative recall (Zoology, Arora et al., 2023, arXiv 2312.04927). ``aQkDzB|kDzBaQ``:
  key/value pairs, then every key again; answers are the values after ``|``.
- ``copying``: ``hbdkqo|hbdkqo``: a random string of fixed length, then itself; answers are the copy (a
  fixed offset back: a test of position encodings).
- ``induction``: ``qzkdt|qzkdt`` with a random length and distinct letters (Olsson et al., 2022, "In-context
  learning and induction heads"): answers are the repeat after its first letter, found by matching the
  current letter earlier in the document, not by a fixed offset.

A new task is a function ``(rng) -> (text, answer_positions)`` registered with ``@register_task(name)``; it
becomes a dataset of the same name.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from typing import Any

import torch

from tinylm.core.data.datasets import DataConfig, register_dataset
from tinylm.core.registry import TASKS

TaskGenerator = Callable[[random.Random], tuple[str, list[int]]]
EVAL_SEED_OFFSET = 1_000_003  # evaluation documents come from a seed no training run uses


def register_task(name: str, version: int = 1) -> Callable[[TaskGenerator], TaskGenerator]:
    """Register a task generator and a dataset ``name`` of ``cfg.num_documents`` of its documents."""

    def wrap(fn: TaskGenerator) -> TaskGenerator:
        TASKS.register(name)(fn)

        def documents(cfg: DataConfig) -> Iterator[str]:
            rng = random.Random(cfg.seed)
            return (fn(rng)[0] for _ in range(cfg.num_documents))

        documents.__doc__ = fn.__doc__
        register_dataset(name, version=version)(documents)
        return fn

    return wrap


@register_task("mqar")
def mqar(rng: random.Random, pairs: int = 8) -> tuple[str, list[int]]:
    """``pairs`` distinct lowercase keys with uppercase values, then the keys shuffled with their values."""
    keys = rng.sample(string.ascii_lowercase, pairs)
    values = {k: rng.choice(string.ascii_uppercase) for k in keys}
    context = "".join(k + values[k] for k in keys)
    queries = rng.sample(keys, pairs)
    text = context + "|" + "".join(k + values[k] for k in queries)
    start = len(context) + 1
    return text, [start + 2 * i + 1 for i in range(pairs)]


@register_task("copying")
def copying(rng: random.Random, length: int = 12) -> tuple[str, list[int]]:
    """A random lowercase string, ``|``, the same string again."""
    s = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
    return s + "|" + s, list(range(length + 1, 2 * length + 1))


@register_task("induction", version=2)
def induction(rng: random.Random, min_length: int = 8, max_length: int = 20) -> tuple[str, list[int]]:
    """Distinct random letters (8-20 of them), ``|``, the same letters again.

    The length varies, so no fixed offset finds the copy: the next letter comes from finding the current
    one earlier and reading what followed it (an induction head). Answers: the repeat after its first
    letter.
    """
    length = rng.randint(min_length, max_length)
    s = "".join(rng.sample(string.ascii_lowercase, length))
    return s + "|" + s, list(range(length + 2, 2 * length + 1))


@torch.no_grad()
def evaluate_task(
    model: Any,
    tokenizer: Any,
    task: str,
    num_examples: int = 256,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Teacher-forced accuracy on the answers of ``num_examples`` fresh documents of ``task``.

    Returns ``accuracy`` (answer characters predicted right by argmax) and ``exact_match`` (documents with
    every answer right). Each document is preceded by ``<eos>``, as in the packed training stream. Needs a
    tokenizer with one token per character (``char``, or ``bytelevel`` on ASCII).
    """
    generator = TASKS.get(task)
    rng = random.Random(seed + EVAL_SEED_OFFSET)
    examples = [generator(rng) for _ in range(num_examples)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = exact = 0
    try:
        for i in range(0, num_examples, batch_size):
            batch = examples[i : i + batch_size]
            rows = []
            for text, _ in batch:
                ids = tokenizer.encode(text)
                if len(ids) != len(text):
                    raise ValueError(
                        f"task accuracy needs one token per character (tokenizer=char); {task!r} text of "
                        f"{len(text)} characters became {len(ids)} tokens"
                    )
                rows.append([tokenizer.eos_id, *ids])
            width = max(map(len, rows))
            ids = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in rows], device=device)
            pred = model(ids).logits.argmax(-1)  # (B, L): pred[:, j] guesses ids[:, j + 1]
            for row, (_, answers) in enumerate(batch):
                pos = torch.tensor(answers, device=device) + 1  # +1: the leading <eos>
                hits = pred[row, pos - 1] == ids[row, pos]
                correct, total = correct + int(hits.sum()), total + len(answers)
                exact += bool(hits.all())
    finally:
        model.train(was_training)
    return {"accuracy": correct / total, "exact_match": exact / num_examples}
