"""TinyLM: loss, tying, init, parameter count, context limits, training signal."""

import math

import pytest
import torch
from torch.nn import functional as F

from tinylm.core import ModelConfig, TinyLM


def test_loss_is_next_token_cross_entropy(ids, tiny_model):
    model = tiny_model()
    labels = ids.clone()
    labels[0, :4] = -100
    out = model(ids, labels=labels)
    ref = F.cross_entropy(out.logits.reshape(-1, 97).double(), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss.double(), ref, atol=1e-6, rtol=1e-6)
    total = model(ids, labels=labels, loss_reduction="sum").loss
    torch.testing.assert_close(total, out.loss * (labels != -100).sum(), rtol=1e-5, atol=1e-5)
    assert model(ids).loss is None
    with pytest.raises(ValueError, match="loss_reduction must be 'mean' or 'sum'"):
        model(ids, labels=labels, loss_reduction="max")


def test_tied_and_untied_embeddings(tiny_model):
    tied = tiny_model(tie_embeddings=True)
    untied = tiny_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 97 * 64


def test_num_parameters_counts_by_hand(tiny_model):
    model = tiny_model(architecture="gpt", hidden_dim=256)
    d, v, h, n = 64, 97, 256, 2
    per_layer = 4 * (d * d + d) + (d * h + h) + (h * d + d) + 2 * 2 * d
    expected = v * d + 64 * d + n * per_layer + 2 * d  # wte + wpe + layers + ln_f (head tied)
    assert model.num_parameters() == expected
    assert model.num_parameters(non_embedding=True) == expected - v * d - 64 * d


def test_gpt2_style_init():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=1000, dim=256, n_layers=8, n_heads=4))
    assert abs(model.layers[0].attn.q_proj.weight.std().item() - 0.02) < 1e-3
    assert abs(model.layers[0].attn.o_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 3e-4
    assert abs(model.layers[0].mlp.down_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 3e-4
    assert torch.equal(model.layers[0].attn_norm.weight, torch.ones(256))


def test_initial_loss_is_near_uniform(ids, tiny_model):
    loss = tiny_model()(ids, labels=ids).loss.item()
    assert abs(loss - math.log(97)) < 0.2


def test_input_errors(tiny_model):
    model = tiny_model(architecture="gpt", max_seq_len=8)
    with pytest.raises(ValueError, match=r"sequence of 9 tokens is longer than the model's context \(8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, seq_len\)"):
        model(torch.zeros(9, dtype=torch.long))
    # RoPE has no table, so a llama model runs past max_seq_len
    assert tiny_model(max_seq_len=8)(torch.zeros(1, 9, dtype=torch.long)).logits.shape == (1, 9, 97)


@pytest.mark.parametrize("architecture", ["llama", "gpt"])
@pytest.mark.parametrize("block", ["prenorm", "postnorm"])
def test_a_few_steps_learn_a_repeated_sequence(architecture, block, tiny_model):
    model = tiny_model(architecture=architecture, block=block).train()
    assert (model.norm is None) == (block == "postnorm")
    seq = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(seq[:, :-1], labels=seq[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_dropout_only_in_training(ids, tiny_model):
    model = tiny_model(dropout=0.5)
    torch.testing.assert_close(model(ids).logits, model(ids).logits)
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)


def test_overrides_on_an_existing_config(tiny_config):
    model = TinyLM(tiny_config(), n_layers=3)
    assert len(model.layers) == 3 and model.config.dim == 64
    assert TinyLM.from_preset("tiny", vocab_size=50).config.dim == 128
