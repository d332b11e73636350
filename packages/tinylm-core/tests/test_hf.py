"""Hugging Face parity: TinyLM logits equal transformers' to 1e-4 (fp32, CPU), both directions."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tinylm.core import from_hf, to_hf  # noqa: E402

LLAMA_CASES = {
    "mha_untied": dict(num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "mqa_bias_theta": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True, rope_theta=500.0),
}


def random_inputs(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(7))


def perturb(model: torch.nn.Module) -> None:
    """Random non-trivial weights everywhere (norm weights and biases are 1/0 at init otherwise)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_llama_from_hf(case):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        **LLAMA_CASES[case],
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    perturb(hf)
    ids = random_inputs(101)
    model = from_hf(hf).eval()
    assert model.config.n_kv_heads == cfg.num_key_value_heads
    with torch.no_grad():
        diff = (model(ids).logits - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_from_hf(tied):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=101,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=32,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    perturb(hf)
    ids = random_inputs(101)
    model = from_hf(hf).eval()
    assert model.config.architecture == "gpt" and model.config.tie_embeddings == tied
    with torch.no_grad():
        diff = (model(ids).logits - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        dict(architecture="llama", n_kv_heads=2),
        dict(architecture="llama", n_kv_heads=1, tie_embeddings=True, bias=True),
        dict(architecture="gpt"),
        dict(architecture="gpt", tie_embeddings=False),
    ],
)
def test_to_hf_and_back(overrides, tiny_model):
    model = tiny_model(**overrides)
    perturb(model)
    ids = random_inputs(97)
    hf = to_hf(model)
    back = from_hf(hf).eval()
    with torch.no_grad():
        ours = model(ids).logits
        assert (hf(ids).logits - ours).abs().max().item() < 1e-4
        torch.testing.assert_close(back(ids).logits, ours, atol=0, rtol=0)
    assert back.config == model.config


def test_unsupported_models_say_why(tiny_model):
    with pytest.raises(ValueError, match="to_hf needs a LLaMA-like"):
        to_hf(tiny_model(architecture="gpt", positional="rope"))
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    with pytest.raises(ValueError, match="from_hf supports model_type 'llama' and 'gpt2', got 'bert'"):
        from_hf(bert)


def test_a_trained_tinylm_generates_the_same_in_hf(tiny_model):
    """Greedy continuation from transformers' generate matches argmax decoding of TinyLM."""
    model = tiny_model(architecture="llama", n_kv_heads=2)
    perturb(model)
    hf = to_hf(model)
    ids = random_inputs(97)[:1, :5]
    with torch.no_grad():
        hf_out = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, 5:]
        seq = ids
        for _ in range(6):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert hf_out.tolist() == seq[0, 5:].tolist()
