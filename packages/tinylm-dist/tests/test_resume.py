"""Exact resume: a run killed after its step-6 checkpoint and resumed matches an unbroken run exactly."""

import pytest
import torch

from tinylm.dist import Trainer, read_metrics


def make_trainer(out_dir, tiny_model, train_config, batches, **overrides) -> Trainer:
    # dropout > 0: the resumed run only matches if the torch RNG state was restored too
    cfg = train_config(max_steps=12, checkpoint_interval=3, eval_interval=4, **overrides)
    model = tiny_model(seed=0, dropout=0.2)
    return Trainer(model, cfg, batches(seed=1), batches(seed=2, data_seed=1, n=2000), out_dir=out_dir)


def by_step(out_dir, kind: str) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(out_dir / "metrics.jsonl", kind=kind)}


def test_resumed_run_matches_the_uninterrupted_one_bit_for_bit(
    tmp_path, tiny_model, train_config, batches, kill_before_step
):
    a, b = tmp_path / "a", tmp_path / "b"
    full = make_trainer(a, tiny_model, train_config, batches)
    full.fit()

    first = make_trainer(b, tiny_model, train_config, batches)
    kill_before_step(first, 8)  # steps 1-7 ran; the last checkpoint is step 6, so step 7 is lost
    with pytest.raises(Exception, match="simulated kill"):
        first.fit()
    assert max(by_step(b, "train")) == 7

    resumed = make_trainer(b, tiny_model, train_config, batches, resume=True)
    assert resumed.step == 6
    resumed.fit()

    train_a, train_b = by_step(a, "train"), by_step(b, "train")
    assert sorted(train_b) == list(range(1, 13))  # the lost step 7 was dropped from the log and redone
    for step in range(1, 13):
        for key in ("loss", "grad_norm", "lr"):
            assert train_b[step][key] == train_a[step][key], (step, key)  # ==, not approx
    assert by_step(b, "eval") == by_step(a, "eval")
    for (name, pa), pb in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    assert resumed.tokens_seen == full.tokens_seen and resumed.best_val_loss == full.best_val_loss


def test_without_the_rng_state_the_resumed_run_differs(
    tmp_path, tiny_model, train_config, batches, kill_before_step, monkeypatch
):
    """The control for the test above: with dropout, a resume that skips the RNG state goes elsewhere."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_trainer(a, tiny_model, train_config, batches).fit()
    first = make_trainer(b, tiny_model, train_config, batches)
    kill_before_step(first, 7)
    with pytest.raises(Exception, match="simulated kill"):
        first.fit()
    monkeypatch.setattr("tinylm.dist.trainer.restore_rng_state", lambda state: None)
    make_trainer(b, tiny_model, train_config, batches, resume=True).fit()
    assert by_step(b, "train")[6]["loss"] == by_step(a, "train")[6]["loss"]
    assert by_step(b, "train")[7]["loss"] != by_step(a, "train")[7]["loss"]


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, tiny_model, train_config, batches):
    trainer = make_trainer(tmp_path, tiny_model, train_config, batches, resume=True)
    assert trainer.step == 0 and trainer.last_checkpoint is None


def test_resuming_a_finished_run_trains_no_further(tmp_path, tiny_model, train_config, batches):
    done = make_trainer(tmp_path, tiny_model, train_config, batches).fit()
    again = make_trainer(tmp_path, tiny_model, train_config, batches, resume=True).fit()
    assert again["steps"] == 12 and again["tokens_seen"] == done["tokens_seen"]
    assert again["final_train_loss"] == done["final_train_loss"]
    assert again["best_val_loss"] == done["best_val_loss"]
    assert len(read_metrics(tmp_path / "metrics.jsonl", kind="train")) == 12
