"""Device resolution and the single-device strategy."""

import pytest
import torch
from torch import nn

from tinylm.dist import SingleDevice, Strategy, resolve_device


def test_auto_prefers_cuda_then_mps_then_cpu():
    device = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_asking_for_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_single_device_is_a_trivial_strategy(tiny_model):
    strategy = SingleDevice("cpu")
    assert (strategy.rank, strategy.world_size, strategy.is_main) == (0, 1, True)
    model = tiny_model()
    assert strategy.setup(model) is model
    t = torch.tensor([1.0, 3.0])
    assert strategy.reduce_mean(t) is t
    with strategy.no_sync(model):
        pass
    strategy.barrier()
    assert strategy.train_state_name() == "train_state.pt"
    assert "cpu" in repr(strategy)


def test_backward_fills_gradients(tiny_model):
    model = tiny_model()
    x = torch.randint(0, 64, (2, 8))
    SingleDevice("cpu").backward(model(x, labels=x).loss)
    assert model.tok_emb.weight.grad is not None


def test_unwrap_sees_through_wrappers(tiny_model):
    class Wrapper(nn.Module):  # the shape of DistributedDataParallel (.module) and compile (._orig_mod)
        def __init__(self, module, attr):
            super().__init__()
            setattr(self, attr, module)

    model = tiny_model()
    wrapped = Wrapper(Wrapper(model, "module"), "_orig_mod")
    assert Strategy().unwrap(wrapped) is model
    assert Strategy().unwrap(model) is model
    with pytest.raises(NotImplementedError):
        Strategy().setup(model)
