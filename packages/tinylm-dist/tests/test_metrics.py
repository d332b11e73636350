"""Metrics JSONL, the loss plot and the summary text."""

import matplotlib

from tinylm.dist import MetricsLogger, format_summary, plot_loss_curve, read_metrics


def test_logger_appends_records_and_reads_them_back(tmp_path):
    log = MetricsLogger(tmp_path / "m" / "metrics.jsonl")
    log.log("train", step=1, loss=2.5)
    log.log("eval", step=1, val_loss=2.4, val_ppl=11.0)
    assert read_metrics(log.path) == [
        {"kind": "train", "step": 1, "loss": 2.5},
        {"kind": "eval", "step": 1, "val_loss": 2.4, "val_ppl": 11.0},
    ]
    assert read_metrics(log.path, kind="eval")[0]["val_loss"] == 2.4


def test_new_run_starts_empty_and_resume_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLogger(path)
    for step in range(1, 6):
        log.log("train", step=step, loss=float(step))
    MetricsLogger(path, keep_until_step=3)  # resumed at step 3: steps 4 and 5 will be redone
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    MetricsLogger(path)
    assert read_metrics(path) == []


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "metrics.jsonl", enabled=False)
    assert log.log("train", step=1)["kind"] == "train"
    assert not log.path.exists()


def test_plot_is_a_png_and_leaves_the_matplotlib_backend_alone(tmp_path):
    backend = matplotlib.get_backend()
    records = [{"kind": "train", "step": s, "loss": 4.0 / s} for s in range(1, 20)]
    records += [{"kind": "eval", "step": s, "val_loss": 4.2 / s} for s in (5, 10, 15)]
    path = plot_loss_curve(records, tmp_path / "plots" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curve([], tmp_path / "empty.png").stat().st_size > 0
    assert matplotlib.get_backend() == backend


def test_summary_text():
    text = format_summary(
        dict(
            params=1234,
            steps=10,
            tokens_seen=5000,
            final_train_loss=2.0,
            best_val_loss=1.0,
            wall_time_s=3.25,
            checkpoint="out/checkpoints/last",
            best_checkpoint="out/checkpoints/best",
        )
    )
    assert "1,234" in text and "5,000" in text and "ppl 2.72" in text and "out/checkpoints/best" in text
    assert "best val loss   -" in format_summary(
        dict(params=1, steps=1, tokens_seen=1, best_val_loss=None, wall_time_s=0.0, checkpoint=None)
    )
