"""``TrainConfig.cuda_graph``: the graphed step trains like the eager one; unusable setups fail clearly."""

import pytest
import torch

from tinylm.dist import Trainer
from tinylm.dist.cuda_graph import CUDAGraphTrainModel, check_cuda_graph_config

CUDA = torch.cuda.is_available()


def test_cuda_graph_on_cpu_is_a_clear_error(tmp_path, tiny_model, train_config, batches):
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device; this run is on cpu"):
        Trainer(tiny_model(), train_config(cuda_graph=True), batches(), out_dir=tmp_path)


def test_cuda_graph_excludes_compile_and_several_processes():
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="alternatives"):
        check_cuda_graph_config(cuda, compile=True, world_size=1)
    with pytest.raises(ValueError, match="single process; this run has 2"):
        check_cuda_graph_config(cuda, compile=False, world_size=2)
    check_cuda_graph_config(cuda, compile=False, world_size=1)  # fine


def test_wrapper_runs_eval_and_other_calls_eagerly(tiny_model):
    model = tiny_model()
    wrapped = CUDAGraphTrainModel(model)
    x = torch.randint(0, 64, (2, 8))
    model.eval()
    with torch.no_grad():
        out = wrapped(x, labels=x)
    torch.testing.assert_close(out.loss, model(x, labels=x).loss)
    assert out.logits is not None and wrapped.captured == 0  # the eager model answered


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphed_training_matches_eager_training(tmp_path, tiny_model, train_config, batches, dtype):
    losses = {}
    for graph in (False, True):
        model = tiny_model(dropout=0.0)
        cfg = train_config(device="cuda", cuda_graph=graph, dtype=dtype, max_steps=6, eval_interval=100)
        trainer = Trainer(model, cfg, batches(), out_dir=tmp_path / str(graph))
        losses[graph] = [trainer.train_step()["loss"] for _ in range(6)]
        if graph:
            assert trainer.step_model.captured == 1
    tol = 1e-5 if dtype == "float32" else 2e-2
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=tol, atol=tol)
    assert losses[True][-1] < losses[True][0]  # it learns
