"""C2C fusion: gate 0 is the receiver alone, training the fuser lowers the receiver's loss, only it trains."""

from __future__ import annotations

import pytest
import torch

from tinylm.cache.c2c import C2CFuser, c2c_generate, c2c_loss, layer_pairs
from tinylm.cache.c2c_demo import FactTask
from tinylm.core import CACHES, TinyLM
from tinylm.core.generate import generate


def models() -> tuple[TinyLM, TinyLM]:
    torch.manual_seed(0)
    receiver = TinyLM(vocab_size=70, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, init_std=0.1).eval()
    sharer = TinyLM(vocab_size=70, dim=48, n_layers=3, n_heads=3, init_std=0.1).eval()  # other shapes
    for m in (receiver, sharer):
        m.requires_grad_(False)
    return receiver, sharer


def test_layer_pairs_align_the_last_layers() -> None:
    assert layer_pairs(2, 3) == [1, 2]
    assert layer_pairs(3, 2) == [0, 0, 1] or layer_pairs(3, 2) == [0, 1, 1]
    assert layer_pairs(4, 4) == [0, 1, 2, 3]


def test_closed_gates_reproduce_the_receiver_alone() -> None:
    receiver, sharer = models()
    fuser = C2CFuser(receiver.config, sharer.config, hidden=32, gate_init=-1.0).eval()  # hard gates: 0
    context = torch.randint(0, 70, (3, 9), generator=torch.Generator().manual_seed(1))
    got = c2c_generate(receiver, sharer, fuser, context, 12, temperature=0.0)
    assert torch.equal(got, generate(receiver, context, 12, temperature=0.0))
    with torch.no_grad():
        fuser.gate_logits.fill_(1.0)  # open gates change the receiver's cache
    assert not torch.equal(
        c2c_generate(receiver, sharer, fuser, context, 12, temperature=0.0)[:, 9:], got[:, 9:]
    )


def test_training_the_fuser_lowers_the_receiver_loss_and_touches_nothing_else() -> None:
    receiver, sharer = models()
    task = FactTask(n_entities=20, n_values=6, seed=0)
    receiver_before = [p.clone() for p in receiver.parameters()]
    fuser = C2CFuser(receiver.config, sharer.config, hidden=64)
    batch = task.sharer_batch(32, torch.Generator().manual_seed(2))

    def eval_loss() -> float:
        fuser.eval()
        with torch.no_grad():
            loss = c2c_loss(receiver, sharer, fuser, batch, task.context_len).item()
        fuser.train()
        return loss

    before = eval_loss()
    opt = torch.optim.AdamW(fuser.parameters(), lr=3e-3)
    for step in range(40):
        fuser.temperature = 1.0 - 0.9 * step / 39
        loss = c2c_loss(receiver, sharer, fuser, batch, task.context_len)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(receiver_before, receiver.parameters(), strict=True))


def test_gumbel_gates_are_soft_in_training_and_hard_in_eval() -> None:
    receiver, sharer = models()
    fuser = C2CFuser(receiver.config, sharer.config, hidden=16)
    with torch.no_grad():
        fuser.gate_logits.copy_(torch.tensor([2.0, -2.0]))
    fuser.train()
    soft = torch.stack([fuser.gates() for _ in range(200)])
    assert ((soft > 0) & (soft < 1)).all() and soft[:, 0].mean() > 0.6 > 0.4 > soft[:, 1].mean()
    fuser.eval()
    assert fuser.gates().tolist() == [1.0, 0.0]


def test_c2c_cache_factory_explains_what_it_needs() -> None:
    with pytest.raises(ValueError, match="receiver=, sharer=, fuser="):
        CACHES.build("c2c", config=None, batch_size=1, max_seq_len=8, device="cpu", dtype=torch.float32)
    receiver, sharer = models()
    fuser = C2CFuser(receiver.config, sharer.config, hidden=16)
    cache = CACHES.build(
        "c2c", receiver=receiver, sharer=sharer, fuser=fuser, context=torch.tensor([[1, 2, 3]])
    )
    assert cache.get_seq_length() == 2
