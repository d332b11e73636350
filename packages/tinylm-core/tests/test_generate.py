"""Generation: cached == uncached, padding-invariant batches, sampling filters, stop tokens, errors."""

import pytest
import torch

from tinylm.core import StandardCache
from tinylm.core.generate import apply_repetition_penalty, generate, pad_prompts, sample_next, stream


@pytest.mark.parametrize("architecture", ["llama", "gpt"])
@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_cached_and_uncached_greedy_are_identical(architecture, n_kv_heads, ids, tiny_model):
    model = tiny_model(architecture=architecture, n_kv_heads=n_kv_heads)
    cached = generate(model, ids, 12, temperature=0)
    uncached = generate(model, ids, 12, temperature=0, use_cache=False)
    assert cached.shape == (3, 23)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :11], ids)


def test_batch_of_prompts_with_padding_matches_one_by_one(tiny_model):
    model = tiny_model(architecture="gpt")
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], [9]]
    ids, mask = pad_prompts(prompts, pad_id=0)
    assert ids.shape == (3, 8) and mask.sum(1).tolist() == [3, 8, 1]
    batch = generate(model, ids, 7, temperature=0, attention_mask=mask)[:, 8:]
    for row, p in zip(batch, prompts, strict=True):
        alone = generate(model, torch.tensor([p]), 7, temperature=0)[0, len(p) :]
        assert row.tolist() == alone.tolist()


def test_stop_tokens_end_a_row_and_pad_it(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([[3, 1, 4], [1, 5, 9]])
    free = generate(model, prompt, 10, temperature=0)
    stop = int(free[0, 5])  # the third generated token of row 0
    out = generate(model, prompt, 10, temperature=0, stop_tokens=[stop], pad_id=0)
    assert out[0, 5] == stop and (out[0, 6:] == 0).all()
    first_stop_row1 = (free[1, 3:] == stop).nonzero()
    if not len(first_stop_row1):  # row 1 never emits it: it continues as before
        assert torch.equal(out[1, : out.size(1)], free[1, : out.size(1)])
    steps = list(stream(model, prompt[:1], 10, temperature=0, stop_tokens=[stop]))
    assert len(steps) == 3  # stops as soon as every row is done


def test_sampling_is_seeded_and_respects_top_k():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(200, 1)
    draws = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 4}
    again = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert sample_next(logits[:1], temperature=0).item() == 4


def test_top_p_keeps_the_nucleus_only():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two tokens
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(500, 1)
    draws = sample_next(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {0, 1}
    draws = sample_next(logits, temperature=1.0, top_p=0.01, generator=torch.Generator().manual_seed(1))
    assert set(draws.tolist()) == {0}  # the top token always survives


def test_high_temperature_flattens():
    logits = torch.tensor([[0.0, 3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(2)
    cold = sample_next(logits, temperature=0.5, generator=g).float().mean()
    hot = sample_next(logits, temperature=5.0, generator=g).float().mean()
    assert cold > 0.99 and 0.5 < hot < 0.75


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]


def test_repetition_penalty_changes_greedy_loops(tiny_model):
    model = tiny_model()
    prompt = torch.tensor([[7, 7, 7, 7]])
    plain = generate(model, prompt, 20, temperature=0)[0, 4:]
    penalised = generate(model, prompt, 20, temperature=0, repetition_penalty=5.0)[0, 4:]
    assert len(set(penalised.tolist())) >= len(set(plain.tolist()))


def test_given_cache_is_used(ids, tiny_model):
    model = tiny_model()
    cache = StandardCache()
    generate(model, ids, 4, temperature=0, cache=cache)
    assert cache.get_seq_length() == ids.shape[1] + 3  # the last sampled token is never fed back


def test_errors(tiny_model):
    model = tiny_model(architecture="gpt", max_seq_len=16)
    with pytest.raises(
        ValueError, match=r"prompt of 10 tokens \+ 8 new tokens is longer than the model's context \(16"
    ):
        generate(model, torch.zeros(1, 10, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="empty prompt"):
        pad_prompts([[1, 2], []], 0)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)


def test_training_mode_is_restored(ids, tiny_model):
    model = tiny_model().train()
    generate(model, ids, 2)
    assert model.training
