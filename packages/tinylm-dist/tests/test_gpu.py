"""CUDA paths: bf16/fp16 autocast, the fp16 GradScaler, fused AdamW, CUDA RNG state, torch.compile."""

import math

import pytest
import torch

from tinylm.dist import Trainer, load_train_state, read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_trainer(out_dir, tiny_model, train_config, batches, **overrides) -> Trainer:
    cfg = train_config(
        device="cuda", **{"max_steps": 8, "checkpoint_interval": 4, "eval_interval": 4, **overrides}
    )
    return Trainer(
        tiny_model(dropout=0.1), cfg, batches(seed=1), batches(seed=2, data_seed=1, n=2000), out_dir
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_training_on_cuda(tmp_path, tiny_model, train_config, batches, dtype):
    trainer = cuda_trainer(tmp_path, tiny_model, train_config, batches, dtype=dtype)
    assert trainer.device.type == "cuda" and trainer.optimizer.param_groups[0]["fused"] is True
    assert (trainer.scaler is not None) == (dtype == "float16")
    summary = trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl", kind="train")]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    state = load_train_state(tmp_path / "checkpoints" / "last")
    assert len(state["rng"]["cuda"]) == torch.cuda.device_count()
    assert ("scale" in state["scaler"]) == (dtype == "float16")
    assert math.isfinite(summary["best_val_loss"])


def test_cuda_resume_restores_scaler_and_continues(
    tmp_path, tiny_model, train_config, batches, kill_before_step
):
    a, b = tmp_path / "a", tmp_path / "b"
    cuda_trainer(a, tiny_model, train_config, batches, dtype="float16").fit()
    first = cuda_trainer(b, tiny_model, train_config, batches, dtype="float16")
    kill_before_step(first, 6)  # the last checkpoint is step 4
    with pytest.raises(Exception, match="simulated kill"):
        first.fit()
    resumed = cuda_trainer(b, tiny_model, train_config, batches, dtype="float16", resume=True)
    assert resumed.step == 4
    assert resumed.scaler.get_scale() == load_train_state(b / "checkpoints" / "last")["scaler"]["scale"]
    resumed.fit()
    loss_a = {r["step"]: r["loss"] for r in read_metrics(a / "metrics.jsonl", kind="train")}
    loss_b = {r["step"]: r["loss"] for r in read_metrics(b / "metrics.jsonl", kind="train")}
    assert sorted(loss_b) == list(range(1, 9))
    # CUDA kernels may reduce in a different order from run to run, so this is close, not bit-exact
    for step in range(5, 9):
        assert loss_b[step] == pytest.approx(loss_a[step], rel=1e-4), step


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_weights(tmp_path, tiny_model, train_config, batches):
    trainer = cuda_trainer(
        tmp_path, tiny_model, train_config, batches, compile=True, dtype="bfloat16", max_steps=4
    )
    assert trainer.train_model is not trainer.model
    trainer.fit()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl", kind="train")]
    assert all(math.isfinite(x) for x in losses)
    from tinylm.core import load_checkpoint

    reloaded = load_checkpoint(tmp_path / "checkpoints" / "last")  # no "_orig_mod." prefixes in the keys
    assert torch.equal(reloaded.tok_emb.weight, trainer.model.tok_emb.weight.cpu())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_parallel_strategies_compose_with_compile_bf16_and_checkpointing_on_cuda(
    tmp_path, tiny_model, train_config, batches, name
):
    """A one-process NCCL group: compiled blocks + activation checkpointing + bf16 train like SingleDevice."""
    import torch.distributed as dist

    from tinylm.dist import build_strategy

    options = {"activation_checkpointing": True}
    if name == "fsdp2":
        options.update(param_dtype="bfloat16", reduce_dtype="float32")
    strategy = build_strategy(name, "cuda", **options)
    try:
        cfg = train_config(device="cuda", compile=True, dtype="bfloat16", max_steps=6, eval_interval=3)
        trainer = Trainer(
            tiny_model(), cfg, batches(seed=1), batches(seed=2, n=2000), tmp_path / name, strategy=strategy
        )
        trainer.fit()
    finally:
        strategy.close()
    assert not dist.is_initialized()
    single_cfg = train_config(device="cuda", dtype="bfloat16", max_steps=6, eval_interval=3)
    single = Trainer(tiny_model(), single_cfg, batches(seed=1), batches(seed=2, n=2000), tmp_path / "single")
    single.fit()
    got = [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl", kind="train")]
    want = [r["loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl", kind="train")]
    assert len(got) == 6 and got == pytest.approx(want, abs=0.05)  # bf16 and compiled kernels: close
