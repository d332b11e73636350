"""time_to_target: the first eval at or under the target, with the elapsed time of its step."""

import json

import pytest

from tinylm.core.bench import time_to_target


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def trainer_log(eval_losses, log_interval=10, eval_interval=50, seconds_per_step=0.5):
    """Records in the order the Trainer writes them: a step's train record before its eval record."""
    records = []
    for step in range(1, eval_interval * len(eval_losses) + 1):
        if step % log_interval == 0:
            records.append({"kind": "train", "step": step, "loss": 2.0, "elapsed": step * seconds_per_step})
        if step % eval_interval == 0:
            records.append({"kind": "eval", "step": step, "val_loss": eval_losses[step // eval_interval - 1]})
    return records


def test_first_eval_reaching_the_target(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", trainer_log([2.1, 1.6, 1.47, 1.40, 1.5]))
    assert time_to_target(path, 1.47) == {"step": 150, "elapsed_s": 75.0, "val_loss": 1.47}
    assert time_to_target(path, 1.45) == {"step": 200, "elapsed_s": 100.0, "val_loss": 1.40}
    assert time_to_target(tmp_path, 1.6)["step"] == 100  # a run directory works too


def test_target_never_reached(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", trainer_log([2.0, 1.9]))
    assert time_to_target(path, 1.47) is None


def test_log_interval_not_dividing_eval_interval_uses_the_last_train_record_before(tmp_path):
    path = write_metrics(tmp_path / "m.jsonl", trainer_log([1.0], log_interval=15, eval_interval=50))
    assert time_to_target(path, 1.47) == {"step": 50, "elapsed_s": 22.5, "val_loss": 1.0}  # step 45


def test_an_eval_record_with_its_own_elapsed_wins(tmp_path):
    records = [
        {"kind": "train", "step": 10, "elapsed": 5.0},
        {"kind": "eval", "step": 10, "val_loss": 1.0, "elapsed": 6.5},
    ]
    assert time_to_target(write_metrics(tmp_path / "m.jsonl", records), 1.47)["elapsed_s"] == 6.5


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        time_to_target(tmp_path / "nothing.jsonl", 1.0)
    (tmp_path / "bad.jsonl").write_text('{"kind": "eval"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not JSON"):
        time_to_target(tmp_path / "bad.jsonl", 1.0)
