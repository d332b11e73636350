"""AdamW parameter groups (nanoGPT's rule) and the fused/foreach choice."""

import pytest
import torch

from tinylm.dist import build_optimizer, param_groups


def test_matrices_decay_and_vectors_do_not(tiny_model):
    model = tiny_model(architecture="gpt")  # biases, LayerNorm weights, learned positions, tied head
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = {id(p) for p in decay["params"]}
    assert id(model.tok_emb.weight) in ids and id(model.pos.weight) in ids  # embeddings decay (nanoGPT)
    assert any(
        n.endswith("bias") for n, p in model.named_parameters() if id(p) in map(id, no_decay["params"])
    )
    # every trainable parameter exactly once, the tied embedding/head weight included
    everything = decay["params"] + no_decay["params"]
    assert len({id(p) for p in everything}) == len(everything)
    assert sum(p.numel() for p in everything) == model.num_parameters()


def test_frozen_parameters_are_left_out(tiny_model):
    model = tiny_model()
    model.tok_emb.weight.requires_grad_(False)
    decay, _ = param_groups(model, 0.1)
    assert id(model.tok_emb.weight) not in {id(p) for p in decay["params"]}
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, lr=1e-3)


def test_cpu_optimizer_is_not_fused_and_carries_the_hyperparameters(tiny_model):
    opt = build_optimizer(tiny_model(), lr=2e-3, weight_decay=0.05, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"]) == (2e-3, (0.8, 0.9), 1e-6)
    assert not g["fused"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_optimizer_is_fused(tiny_model):
    opt = build_optimizer(tiny_model().cuda(), lr=1e-3)
    assert opt.param_groups[0]["fused"] is True
