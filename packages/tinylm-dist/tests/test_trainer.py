"""The Trainer: exact gradient accumulation, the fit loop's outputs, eval, samples and divergence."""

import importlib.util
import json
import math

import pytest
import torch

from tinylm.core import LMOutput, load_checkpoint
from tinylm.dist import Trainer, TrainingDivergedError, load_train_state, lr_at, read_metrics

HAVE_GENERATE = importlib.util.find_spec("tinylm.core.generate") is not None


def ragged_batch(n: int = 32, t: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (x, y) whose rows keep very different numbers of targets (the rest is -100 padding)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (n, t), generator=g)
    y = torch.randint(0, 64, (n, t), generator=g)
    for i in range(n):
        keep = t if i < 8 else 1 + (i * 7) % 5  # the first micro-batch is full, the others short
        y[i, keep:] = -100
    return x, y


def test_accumulated_gradients_equal_one_big_batch(tmp_path, tiny_model, train_config, batches):
    model = tiny_model()
    trainer = Trainer(model, train_config(batch_size=8, grad_accum_steps=4), batches(8), out_dir=tmp_path)
    x, y = ragged_batch()
    micro = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    assert len({int((m[1] != -100).sum()) for m in micro}) > 1  # micro-batches differ in target counts

    loss = trainer.accumulate_gradients(micro)
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    full = model(x, labels=y)  # one batch of 32, mean over its valid targets
    full.loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(accumulated[name], p.grad, atol=1e-6, rtol=0, msg=name)
    assert abs(float(loss) - float(full.loss.detach())) < 1e-6

    # The naive way (average the micro-batch means) gives a different gradient: the test has teeth.
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for xm, ym in micro:
        (model(xm, labels=ym).loss / len(micro)).backward()
    naive_gap = max(float((p.grad - reference[n]).abs().max()) for n, p in model.named_parameters())
    assert naive_gap > 1e-3


def test_micro_batches_without_targets_are_an_error(tmp_path, tiny_model, train_config, batches):
    trainer = Trainer(tiny_model(), train_config(), batches(), out_dir=tmp_path)
    x = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no target tokens"):
        trainer.accumulate_gradients([(x, torch.full_like(x, -100))])


def test_fit_writes_metrics_checkpoints_plot_and_summary(
    tmp_path, tiny_model, train_config, batches, byte_tokenizer, capsys
):
    cfg = train_config(sample_prompts=["count: "], progress=True)
    model = tiny_model()
    summary = Trainer(model, cfg, batches(), batches(data_seed=1, n=2000), tmp_path, byte_tokenizer).fit()

    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["step"] for r in train] == list(range(1, 13))
    assert set(train[0]) == {"kind", "step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"}
    assert [r["lr"] for r in train] == [lr_at(s - 1, cfg) for s in range(1, 13)]
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in train)
    evals = read_metrics(tmp_path / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in evals] == [6, 12]
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    if HAVE_GENERATE:
        samples = read_metrics(tmp_path / "metrics.jsonl", kind="samples")
        assert [r["step"] for r in samples] == [6, 12]
        assert samples[0]["samples"][0]["prompt"] == "count: "
        assert len(samples[0]["samples"][0]["text"]) == cfg.sample_tokens

    last, best = tmp_path / "checkpoints" / "last", tmp_path / "checkpoints" / "best"
    for d in (last, best):
        names = {p.name for p in d.iterdir()}
        assert names == {
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "train_state.pt",
            "trainer.json",
        }
    assert json.loads((last / "trainer.json").read_text()) == cfg.to_dict()
    state = load_train_state(last)
    assert state["step"] == 12 and state["tokens_seen"] == 12 * 2 * 4 * 16
    best_step = min(evals, key=lambda r: r["val_loss"])["step"]
    assert load_train_state(best)["step"] == best_step
    assert state["best_val_loss"] == min(r["val_loss"] for r in evals)
    reloaded = load_checkpoint(last)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["params"] == model.num_parameters()
    assert summary["steps"] == 12 and summary["tokens_seen"] == 1536
    assert summary["best_val_loss"] == state["best_val_loss"]
    assert summary["final_train_loss"] == train[-1]["loss"]
    assert summary["checkpoint"] == str(last) and summary["best_checkpoint"] == str(best)
    assert "best val loss" in capsys.readouterr().out


def test_training_reduces_the_loss(tmp_path, tiny_model, train_config, batches):
    cfg = train_config(max_steps=40, eval_interval=20, warmup_steps=4, grad_accum_steps=1, batch_size=8)
    Trainer(tiny_model(), cfg, batches(8), batches(data_seed=1, n=2000), tmp_path).fit()
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    evals = read_metrics(tmp_path / "metrics.jsonl", kind="eval")
    assert train[0]["loss"] > math.log(64) - 0.3  # starts near uniform
    assert evals[-1]["val_loss"] < train[0]["loss"] - 1.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_no_val_data_means_no_eval_and_no_best(tmp_path, tiny_model, train_config, batches):
    summary = Trainer(tiny_model(), train_config(max_steps=3), batches(), out_dir=tmp_path).fit()
    assert read_metrics(tmp_path / "metrics.jsonl", kind="eval") == []
    assert summary["best_val_loss"] is None and summary["best_checkpoint"] is None
    assert not (tmp_path / "checkpoints" / "best").exists()
    with pytest.raises(ValueError, match="needs val_data"):
        Trainer(tiny_model(), train_config(), batches(), out_dir=tmp_path / "b").evaluate()


def test_evaluate_and_sample_change_nothing_training_sees(
    tmp_path, tiny_model, train_config, batches, byte_tokenizer
):
    val = batches(data_seed=1, n=2000)
    cfg = train_config(sample_prompts=["ab", "xyz"])
    trainer = Trainer(tiny_model(dropout=0.2), cfg, batches(), val, tmp_path, byte_tokenizer)
    trainer.train_step()
    next(val)  # the val iterator is somewhere in the middle; eval must put it back there
    val_state, rng = val.state_dict(), torch.get_rng_state()
    first = trainer.evaluate()
    samples = trainer.sample() if HAVE_GENERATE else []
    assert trainer.evaluate() == first  # the same batches every time
    assert val.state_dict() == val_state
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.model.training
    if HAVE_GENERATE:
        assert [s["prompt"] for s in samples] == ["ab", "xyz"]
        assert trainer.sample() == samples  # seeded: the same continuation for the same weights


@pytest.mark.skipif(not HAVE_GENERATE, reason="tinylm.core.generate is not there yet")
def test_samples_fit_a_learned_position_table(tmp_path, tiny_model, train_config, batches, byte_tokenizer):
    model = tiny_model(architecture="gpt", max_seq_len=32)
    cfg = train_config(sample_tokens=40, sample_temperature=0.0)
    trainer = Trainer(model, cfg, batches(), out_dir=tmp_path, tokenizer=byte_tokenizer)
    (sample,) = trainer.sample(["a long prompt, longer than the context allows" * 2])
    assert len(sample["text"]) == 31  # 1 prompt token + 31 new ones fill the 32 positions


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_model, train_config, batches, monkeypatch
):
    model = tiny_model()
    cfg = train_config(max_steps=10, checkpoint_interval=2, eval_interval=100)
    trainer = Trainer(model, cfg, batches(), out_dir=tmp_path)
    forward = model.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        return LMOutput(out.logits, out.loss * math.inf) if trainer.step >= 3 else out

    monkeypatch.setattr(model, "forward", poisoned)
    last = tmp_path / "checkpoints" / "last"
    with pytest.raises(TrainingDivergedError, match=rf"step 4: the loss is inf; .*{last}") as info:
        trainer.fit()
    assert info.value.step == 4 and info.value.checkpoint == last
    assert load_train_state(last)["step"] == 2  # step 3's weights were not checkpointed, step 4's never made
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 3
    assert all(torch.isfinite(p).all() for p in load_checkpoint(last).parameters())


def test_divergence_before_any_checkpoint_says_so(tmp_path, tiny_model, train_config, batches):
    trainer = Trainer(tiny_model(), train_config(lr=1.0), batches(), out_dir=tmp_path)
    with torch.no_grad():
        trainer.model.tok_emb.weight.fill_(math.nan)
    with pytest.raises(
        TrainingDivergedError, match="step 1: the loss is nan; no checkpoint had been written"
    ):
        trainer.fit()
    assert not (tmp_path / "checkpoints").exists()


def test_broken_weights_are_never_checkpointed(tmp_path, tiny_model, train_config, batches):
    cfg = train_config(checkpoint_interval=2, eval_interval=100)
    trainer = Trainer(tiny_model(), cfg, batches(), out_dir=tmp_path)
    step = trainer.optimizer.step

    def overflowing_step(*args, **kwargs):
        step(*args, **kwargs)
        if trainer.step == 1:  # the update of step 2 leaves an inf weight, the loss not yet affected
            trainer.model.norm.weight.data[0] = math.inf

    trainer.optimizer.step = overflowing_step
    with pytest.raises(TrainingDivergedError, match="step 2: the weight norm.weight is not finite"):
        trainer.fit()
    assert not (tmp_path / "checkpoints" / "last").exists()


@pytest.mark.skipif(not HAVE_GENERATE, reason="tinylm.core.generate is not there yet")
def test_samples_skip_ids_of_a_padded_model_vocab(
    tmp_path, tiny_model, train_config, batches, byte_tokenizer
):
    byte_tokenizer.vocab_size = 10  # the model has 64 rows; ids 10..63 mean nothing to this tokenizer
    cfg = train_config(sample_tokens=30, sample_temperature=2.0, sample_top_k=None)
    trainer = Trainer(tiny_model(), cfg, batches(), out_dir=tmp_path, tokenizer=byte_tokenizer)
    (sample,) = trainer.sample(["hello"])
    assert set(sample["text"]) <= set("ABCDEFGHIJ") and len(sample["text"]) < 30
    byte_tokenizer.vocab_size = 100
    with pytest.raises(ValueError, match="tokenizer has 100 tokens, more than the model's vocab_size=64"):
        Trainer(tiny_model(), cfg, batches(), out_dir=tmp_path, tokenizer=byte_tokenizer)
