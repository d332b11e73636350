"""Paged cache: allocator invariants, prefix sharing, copy-on-write, pool exhaustion, ragged rows, waste."""

from __future__ import annotations

import random

import pytest
import torch

from tinylm.cache import BlockAllocator, PagedCache, PoolExhaustedError
from tinylm.cache.conformance import tiny_model


def make(model, num_blocks: int = 32, block_size: int = 4) -> PagedCache:
    c = model.config
    return PagedCache(c.n_layers, c.n_kv_heads, c.head_dim, num_blocks, block_size, dtype=torch.float64)


def prefill(model, cache: PagedCache, seq_id: int, tokens: list[int]) -> torch.Tensor:
    """Add a sequence (sharing cached prefix blocks) and compute the rest; last-position logits."""
    cached = cache.add_sequence(seq_id, tokens)
    cache.set_batch([seq_id])
    ids = torch.tensor([tokens[cached:]])
    logits = model(ids, positions=torch.arange(cached, len(tokens))[None], cache=cache).logits[:, -1]
    cache.publish_prefix(seq_id, tokens)
    return logits


def test_allocator_never_leaks_under_random_arrivals_and_finishes() -> None:
    rng = random.Random(0)
    alloc = BlockAllocator(num_blocks=40, block_size=4)
    owned: dict[int, list[int]] = {}
    for step in range(2000):
        action = rng.random()
        if action < 0.45 and alloc.num_free:
            owned[step] = alloc.allocate(rng.randint(1, min(3, alloc.num_free)))
        elif action < 0.6 and owned:  # share someone's blocks (a fork)
            src = owned[rng.choice(list(owned))]
            for b in src:
                alloc.share(b)
            owned[-step] = list(src)
        elif action < 0.7 and owned:
            blocks = owned[rng.choice(list(owned))]
            alloc.publish(rng.randint(0, 30), blocks[0])  # published blocks stay findable after free
        elif owned:
            for b in owned.pop(rng.choice(list(owned))):
                alloc.free(b)
        refs = [0] * 40
        for blocks in owned.values():
            for b in blocks:
                refs[b] += 1
        assert refs == alloc.refcount and alloc.num_free == sum(r == 0 for r in refs)
    for blocks in owned.values():
        for b in blocks:
            alloc.free(b)
    assert alloc.num_free == 40 and not any(alloc.refcount)
    with pytest.raises(ValueError, match="double free"):
        alloc.free(0)


def test_pool_exhaustion_is_a_clear_error_and_changes_nothing() -> None:
    model = tiny_model()
    cache = make(model, num_blocks=3, block_size=4)
    model(torch.randint(0, 97, (1, 10)), cache=cache)  # 3 blocks in use
    state = (list(cache.sequences[0].blocks), cache.sequences[0].length, cache.allocator.num_free)
    with pytest.raises(PoolExhaustedError, match="1 block.*0 of 3 free.*preempts"):
        model(torch.randint(0, 97, (1, 3)), cache=cache)
    assert (list(cache.sequences[0].blocks), cache.sequences[0].length, cache.allocator.num_free) == state


def test_prefix_sharing_reuses_blocks_and_gives_the_same_logits() -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(6)
    shared = torch.randint(0, 97, (10,), generator=g).tolist()
    a, b = [*shared, 5, 6, 7], [*shared, 8, 9]
    cache = make(model, block_size=4)
    logits_a = prefill(model, cache, 0, a)
    used = cache.allocator.num_used
    logits_b = prefill(model, cache, 1, b)
    assert cache.sequences[1].blocks[:2] == cache.sequences[0].blocks[:2]  # 8 shared tokens = 2 blocks
    assert cache.allocator.num_used == used + 1  # b only needed its third block
    assert cache.prefix_hit_rate == pytest.approx(2 / 6)  # a: 3 full blocks, all missed; b: hit, hit, miss
    for seq, logits in ((a, logits_a), (b, logits_b)):
        torch.testing.assert_close(logits, model(torch.tensor([seq])).logits[:, -1], atol=1e-10, rtol=0)


def test_fully_cached_prompt_recomputes_its_last_token_with_copy_on_write() -> None:
    model = tiny_model()
    tokens = torch.randint(0, 97, (8,), generator=torch.Generator().manual_seed(7)).tolist()
    cache = make(model, block_size=4)
    first = prefill(model, cache, 0, tokens)
    second = prefill(model, cache, 1, tokens)  # both blocks hit; the last token is rewritten -> a copy
    assert cache.copy_on_write_count == 1
    assert cache.sequences[1].blocks[0] == cache.sequences[0].blocks[0]
    assert cache.sequences[1].blocks[1] != cache.sequences[0].blocks[1]
    torch.testing.assert_close(first, second, atol=1e-10, rtol=0)


def test_fork_then_diverge_copies_the_shared_partial_block() -> None:
    model = tiny_model()
    cache = make(model, block_size=4)
    prompt = [3, 1, 4, 1, 5, 9]
    prefill(model, cache, 0, prompt)
    cache.fork(0, 1)
    cache.set_batch([0, 1])
    nxt = torch.tensor([[2], [7]])
    logits = model(nxt, positions=torch.tensor([[6], [6]]), cache=cache).logits[:, -1]
    assert cache.copy_on_write_count == 1
    for row, tok in enumerate((2, 7)):
        ref = model(torch.tensor([[*prompt, tok]])).logits[0, -1]
        torch.testing.assert_close(logits[row], ref, atol=1e-10, rtol=0)
    cache.free_sequence(0)
    cache.free_sequence(1)
    assert cache.allocator.num_free == cache.allocator.num_blocks


def test_ragged_rows_decode_like_each_sequence_alone() -> None:
    model = tiny_model()
    g = torch.Generator().manual_seed(8)
    seqs = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (3, 9, 6)]
    cache = make(model, block_size=4)
    for i, s in enumerate(seqs):
        prefill(model, cache, i, s)
    cache.set_batch([0, 1, 2])
    nxt = torch.tensor([[11], [12], [13]])
    pos = torch.tensor([[len(s)] for s in seqs])
    logits = model(nxt, positions=pos, cache=cache).logits[:, -1]
    for i, s in enumerate(seqs):
        ref = model(torch.tensor([[*s, 11 + i]])).logits[0, -1]
        torch.testing.assert_close(logits[i], ref, atol=1e-10, rtol=0)
    assert [cache.sequences[i].length for i in range(3)] == [4, 10, 7]


def test_memory_waste_counts_unfilled_slots_and_shared_blocks_once() -> None:
    model = tiny_model()
    cache = make(model, block_size=4)
    prefill(model, cache, 0, [1, 2, 3, 4, 5])  # blocks: 4 + 1 filled
    prefill(model, cache, 1, list(range(50, 58)))  # 4 + 4
    prefill(model, cache, 2, [1, 2, 3, 4, 9, 9])  # shares seq 0's first block, then 2 filled
    assert cache.sequences[2].blocks[0] == cache.sequences[0].blocks[0]
    assert cache.used_slots() == (4 + 1 + 4 + 4 + 2, 5 * 4)
    assert cache.memory_waste() == pytest.approx(5 / 20)


@pytest.mark.parametrize("n_new", [1, 3])
def test_blocks_needed_is_what_the_next_write_takes(n_new: int) -> None:
    """Through block boundaries and copy-on-write of shared blocks (a fork shares a partial and, at 8
    tokens, a full last block), the prediction for a sequence equals the blocks its write then takes."""
    model = tiny_model()
    cache = make(model, num_blocks=60, block_size=4)
    prefill(model, cache, 0, [5, 3, 8, 1, 2, 9, 4])  # 7 tokens: a partial last block
    prefill(model, cache, 2, [6, 6, 1, 2, 3, 4, 7, 7])  # 8 tokens: full blocks only
    cache.fork(0, 1)
    cache.fork(2, 3)
    taken = []
    for step in range(5):
        for s in range(4):
            predicted = cache.blocks_needed(s, n_new)
            free = cache.allocator.num_free
            cache.set_batch([s])
            pos = torch.arange(n_new)[None] + cache.sequences[s].length
            model(torch.full((1, n_new), 10 + step), positions=pos, cache=cache)
            taken.append(free - cache.allocator.num_free)
            assert taken[-1] == predicted, f"step {step}, sequence {s}"
    assert cache.copy_on_write_count == 1 and max(taken) >= 1  # seq 0 copies the shared partial block
