"""Synthetic tasks: documents have the promised answers, datasets are seeded, accuracy is aligned."""

import random

import pytest
import torch
from torch import nn

from tinylm.core.data import TASKS, DataConfig, build_tokenizer, evaluate_task, iter_documents


def test_tasks_are_registered_as_datasets_and_seeded():
    assert {"mqar", "copying", "induction"} <= set(TASKS.names())
    for task in ("mqar", "copying", "induction"):
        docs = list(iter_documents(DataConfig(name=task, num_documents=6, seed=3)))
        assert len(docs) == 6 and len(set(docs)) > 1
        assert docs == list(iter_documents(DataConfig(name=task, num_documents=6, seed=3)))
        assert docs != list(iter_documents(DataConfig(name=task, num_documents=6, seed=4)))


def test_answers_follow_from_the_context():
    rng = random.Random(0)
    for _ in range(50):
        text, answers = TASKS.get("mqar")(rng)
        context = text[: text.index("|")]
        table = {context[i]: context[i + 1] for i in range(0, len(context), 2)}
        assert len(table) == 8 and len(answers) == 8
        assert all(text[p] == table[text[p - 1]] for p in answers)
        text, answers = TASKS.get("copying")(rng)
        assert all(text[p] == text[p - 13] for p in answers) and text[answers[0] - 1] == "|"
    lengths = set()
    for _ in range(50):
        text, answers = TASKS.get("induction")(rng)
        first, second = text.split("|")
        assert first == second and len(set(first)) == len(first)  # distinct letters: one match each
        assert answers == list(range(len(first) + 2, len(text)))  # the repeat after its first letter
        lengths.add(len(first))
    assert len(lengths) > 5  # no fixed offset finds the copy


class Peeker(nn.Module):
    """Predicts ``ids[:, j + shift]`` at position j by reading its own input (a test oracle)."""

    def __init__(self, vocab: int, shift: int) -> None:
        super().__init__()
        self.vocab, self.shift, self.w = vocab, shift, nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        target = ids.roll(-self.shift, dims=1)
        return type("Out", (), {"logits": nn.functional.one_hot(target, self.vocab).float()})


@pytest.mark.parametrize("task", ["mqar", "copying", "induction"])
def test_accuracy_counts_exactly_the_answers(task):
    texts = [TASKS.get(task)(random.Random(i))[0] for i in range(20)]
    tok = build_tokenizer("char", [*texts, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ|#"])
    assert evaluate_task(Peeker(tok.vocab_size, 1), tok, task, num_examples=40, batch_size=16) == {
        "accuracy": 1.0,
        "exact_match": 1.0,
    }
    wrong = evaluate_task(Peeker(tok.vocab_size, 0), tok, task, num_examples=40)  # off by one: no skill
    assert wrong["accuracy"] < 0.2 and wrong["exact_match"] < 0.2


def test_accuracy_needs_one_token_per_character():
    tok = build_tokenizer("whitespace", ["aQbZ|aQ hello world"])  # a document is one word
    with pytest.raises(ValueError, match="one token per character"):
        evaluate_task(Peeker(tok.vocab_size, 1), tok, "mqar", num_examples=4)
