"""Continuous-batching engine: outputs equal one-by-one generation, through arrivals, preemption, prefixes."""

from __future__ import annotations

import pytest
import torch

from tinylm.cache import Engine, PoolExhaustedError
from tinylm.cache.conformance import tiny_model
from tinylm.core.generate import generate


def alone(model, prompt: list[int], n: int, **kw) -> list[int]:
    out = generate(model, torch.tensor([prompt]), n, **kw)
    return out[0, len(prompt) :].tolist()


def requests(seed: int = 0) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(0, 97, (8,), generator=g).tolist()  # two requests share a prompt prefix
    lens, news = (5, 13, 3, 9, 6, 11), (7, 4, 12, 9, 5, 10)
    reqs = [(torch.randint(0, 97, (n,), generator=g).tolist(), m) for n, m in zip(lens, news, strict=True)]
    reqs[1] = ([*shared, 1, 2, 3], reqs[1][1])
    reqs[4] = ([*shared, 4, 5], reqs[4][1])
    return reqs


@pytest.mark.parametrize(("num_blocks", "expect_preemption"), [(64, False), (9, True)])
def test_outputs_equal_one_by_one_generation(num_blocks: int, expect_preemption: bool) -> None:
    model = tiny_model()
    reqs = requests()
    engine = Engine(model, num_blocks=num_blocks, block_size=4, max_batch=4, token_budget=24)
    ids = [engine.add_request(p, n) for p, n in reqs[:3]]
    streamed: dict[int, list[int]] = {}
    for _ in range(3):  # the rest arrive while the first ones are mid-flight
        for rid, tok in engine.step():
            streamed.setdefault(rid, []).append(tok)
    ids += [engine.add_request(p, n) for p, n in reqs[3:]]
    for rid, tok in engine.stream():
        streamed.setdefault(rid, []).append(tok)
    outputs = {i: r.output for i, r in engine.finished.items()}
    assert outputs == streamed
    for rid, (prompt, n) in zip(ids, reqs, strict=True):
        assert outputs[rid] == alone(model, prompt, n, temperature=0.0), f"request {rid} differs"
    assert (engine.stats.preemptions > 0) == expect_preemption
    assert engine.stats.peak_running > 1
    assert engine.cache.allocator.num_free == num_blocks  # every block came back
    assert engine.cache.prefix_hit_rate > 0


def test_sampling_per_request_matches_sampling_alone() -> None:
    model = tiny_model()
    engine = Engine(model, num_blocks=40, block_size=4)
    reqs = requests(1)[:3]
    ids = [engine.add_request(p, n, temperature=0.9, top_k=20, seed=10 + i) for i, (p, n) in enumerate(reqs)]
    out = engine.run()
    for i, (rid, (p, n)) in enumerate(zip(ids, reqs, strict=True)):
        g = torch.Generator().manual_seed(10 + i)
        assert out[rid] == alone(model, p, n, temperature=0.9, top_k=20, generator=g)


def test_stop_token_finishes_early_and_frees_blocks() -> None:
    model = tiny_model()
    prompt = [5, 6, 7]
    ref = alone(model, prompt, 10, temperature=0.0)
    engine = Engine(model, num_blocks=16, block_size=4)
    rid = engine.add_request(prompt, 10, stop_tokens=[ref[2]])
    out = engine.run()
    assert out[rid] == ref[: ref.index(ref[2]) + 1]
    assert engine.cache.allocator.num_free == 16


def test_request_larger_than_the_pool_is_a_clear_error() -> None:
    engine = Engine(tiny_model(), num_blocks=2, block_size=4)
    engine.add_request(list(range(1, 12)), 3)
    with pytest.raises(PoolExhaustedError, match="needs 3 blocks.*pool has 2"):
        engine.run()
