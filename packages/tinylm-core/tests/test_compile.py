"""The model compiles as one graph: no graph breaks in forward + loss (kernel dispatch included)."""

import pytest
import torch

from tinylm.core import ModelConfig, TinyLM


def graph_breaks(model: TinyLM, x: torch.Tensor) -> list[str]:
    import torch._dynamo as dynamo

    dynamo.reset()
    explained = dynamo.explain(lambda ids: model(ids, labels=ids).loss)(x)
    return [
        f"{str(b.reason).splitlines()[0]} at "
        + "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in b.user_stack[-3:])
        for b in explained.break_reasons
    ]


def test_llama_forward_and_loss_have_no_graph_breaks():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig.from_preset("tiny", vocab_size=64, n_layers=2, dim=32, n_heads=2))
    assert graph_breaks(model, torch.randint(0, 64, (2, 8))) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_llama_on_cuda_with_the_fast_kernels_has_no_graph_breaks():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig.from_preset("tiny", vocab_size=64, n_layers=2)).cuda()
    with torch.autocast("cuda", torch.bfloat16):
        assert graph_breaks(model, torch.randint(0, 64, (2, 8), device="cuda")) == []
