"""Strategy registry, option checks, data-position rescaling, activation checkpointing, and DDP / FSDP2 as
a one-process group (no torchrun: an in-memory store) against ``SingleDevice``."""

import pytest
import torch
import torch.distributed as dist

from tinylm.dist import (
    SingleDevice,
    Trainer,
    apply_activation_checkpointing,
    build_strategy,
    is_sharded,
    read_metrics,
    rescale_data_state,
)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(KeyError, match="ddp.*fsdp2.*single"):
        build_strategy("zero3")


def test_unknown_option_names_the_allowed_ones():
    message = r"unknown dist.fsdp2 options \['bucket_cap_mb'\].*reshard_after_forward"
    with pytest.raises(ValueError, match=message):
        build_strategy("fsdp2", "cpu", bucket_cap_mb=25)
    assert isinstance(build_strategy("single", "cpu", activation_checkpointing=True), SingleDevice)


def test_data_positions_rescale_to_the_same_point_of_the_global_order():
    state = {"epoch": 2, "index": 6, "seed": 1}
    assert rescale_data_state(state, 2, 1) == {"epoch": 2, "index": 12, "seed": 1}
    assert rescale_data_state(state, 2, 4) == {"epoch": 2, "index": 3, "seed": 1}
    assert rescale_data_state(None, 2, 1) is None
    with pytest.raises(ValueError, match="not a multiple of 5"):
        rescale_data_state(state, 2, 5)


def test_activation_checkpointing_changes_memory_not_results(tiny_model):
    x = torch.randint(0, 64, (2, 12))
    plain, checkpointed = tiny_model(seed=3), tiny_model(seed=3)
    apply_activation_checkpointing(checkpointed)
    assert list(plain.state_dict()) == list(checkpointed.state_dict())  # names unchanged
    plain(x, labels=x).loss.backward()
    checkpointed(x, labels=x).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=0, msg=name)
    with pytest.raises(ValueError, match="no `layers`"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2))


@pytest.fixture
def one_process_group():
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["ddp", "fsdp2"])
def test_one_process_group_trains_like_single_device(
    name, tmp_path, tiny_model, train_config, batches, one_process_group
):
    def fit(out, strategy, **overrides):
        cfg = train_config(max_steps=4, eval_interval=2, **overrides)
        trainer = Trainer(tiny_model(), cfg, batches(seed=1), batches(seed=2, n=2000), out, strategy=strategy)
        trainer.fit()
        return [r["loss"] for r in read_metrics(out / "metrics.jsonl", kind="train")], trainer

    want, _ = fit(tmp_path / "single", SingleDevice("cpu"))
    options = {"activation_checkpointing": True}
    got, trainer = fit(tmp_path / name, build_strategy(name, "cpu", **options))
    assert trainer.strategy.world_size == 1 and dist.is_initialized()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert is_sharded(tmp_path / name / "checkpoints" / "last")
    trainer.strategy.close()
    assert not dist.is_initialized()
    # the sharded checkpoint resumes without any process group, and the run is already complete
    resumed = Trainer(
        tiny_model(seed=9),
        train_config(max_steps=4, eval_interval=2, resume=True),
        batches(seed=1),
        batches(seed=2, n=2000),
        tmp_path / name,
        strategy=SingleDevice("cpu"),
    )
    assert resumed.step == 4
    saved, loaded = trainer.model.state_dict(), resumed.model.state_dict()
    for (key, a), b in zip(saved.items(), loaded.values(), strict=True):
        a = a.full_tensor() if hasattr(a, "full_tensor") else a
        assert torch.equal(a, b), key
