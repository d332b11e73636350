"""QAT: prepare keeps the float state dict, trains, and convert gives the fake-quantized numbers."""

import copy

import pytest
import torch

from tinylm.core import UnknownNameError
from tinylm.quant import QAT_SCHEMES, convert_qat, is_qat_prepared, prepare_qat, quant_info, quantize


@pytest.mark.parametrize("scheme", sorted(QAT_SCHEMES))
def test_prepare_train_convert_round_trip(scheme, tiny, ids):
    model = tiny()
    keys = set(model.state_dict())
    prepared = prepare_qat(copy.deepcopy(model), scheme)
    assert is_qat_prepared(prepared)
    assert set(prepared.state_dict()) == keys  # the Trainer's checkpoints stay float checkpoints
    fake = prepared(ids).logits
    assert not torch.equal(fake, model(ids).logits)  # rounding is simulated
    prepared.train()
    loss = prepared(ids, labels=ids).loss
    loss.backward()  # straight-through gradients reach the float weights
    grad = prepared.layers[0].attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    prepared.zero_grad()
    prepared.eval()
    with torch.no_grad():
        fake = prepared(ids).logits
        converted = convert_qat(prepared)
        assert not is_qat_prepared(converted)
        assert quant_info(converted).scheme == QAT_SCHEMES[scheme]
        torch.testing.assert_close(converted(ids).logits, fake, rtol=1e-5, atol=1e-5)
        # and the same as post-training quantization of the same float weights
        ptq = quantize(copy.deepcopy(model), QAT_SCHEMES[scheme])
        same_weights = prepare_qat(copy.deepcopy(model), scheme)
        torch.testing.assert_close(ptq(ids).logits, convert_qat(same_weights)(ids).logits)


def test_unknown_qat_scheme(tiny):
    with pytest.raises(UnknownNameError, match="qat_int4"):
        prepare_qat(tiny(), "qat_int2")


def test_convert_without_prepare(tiny):
    with pytest.raises(ValueError, match="prepare_qat"):
        convert_qat(tiny())


def test_qat_keeps_lm_head(tiny):
    prepared = prepare_qat(tiny(), "qat_int4")
    assert type(prepared.lm_head) is torch.nn.Linear
