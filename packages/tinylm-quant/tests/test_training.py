"""Training-time quantization: float8 conversion (GPU) and the prepare/finish hooks apps/train.py uses."""

import pytest
import torch

from tinylm.quant import (
    SchemeUnavailableError,
    convert_to_float8_training,
    finish_training,
    is_qat_prepared,
    load_quantized,
    prepare_for_training,
)

FLOAT8 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def test_float8_training_says_what_it_needs_on_cpu(tiny):
    with pytest.raises(SchemeUnavailableError, match="compute capability >= 8.9"):
        convert_to_float8_training(tiny(), device="cpu")


def test_prepare_and_finish_for_qat(tiny, ids, tmp_path):
    model = prepare_for_training(tiny(), "qat_int4", "cpu")
    assert is_qat_prepared(model)
    loss = model(ids, labels=ids).loss
    loss.backward()
    path = finish_training(model, "qat_int4", tmp_path)
    assert path == tmp_path / "quantized"
    with torch.no_grad():
        assert torch.equal(load_quantized(path)(ids).logits, model(ids).logits)
    assert finish_training(tiny(), "none", tmp_path / "other") is None
    with pytest.raises(ValueError, match="qat_int4"):
        prepare_for_training(tiny(), "qat_int3", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not FLOAT8, reason="needs a CUDA GPU with float8 (sm89+)")
def test_float8_training_step_on_gpu(tiny):
    from torchao.float8.float8_linear import Float8Linear

    model = tiny(dim=128, n_heads=4, hidden_dim=256).cuda().train()
    convert_to_float8_training(model)
    assert isinstance(model.layers[0].attn.q_proj, Float8Linear)
    assert type(model.lm_head) is torch.nn.Linear
    ids = torch.randint(0, 97, (4, 32), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.layers[0].attn.q_proj.weight.grad.abs().sum() > 0
