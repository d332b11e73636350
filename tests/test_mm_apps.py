"""apps/train.py data=mm_* (a tinylm-mm captioner) and apps/infer.py --image/--audio end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinylm.mm import caption_file, write_examples

ROOT = Path(__file__).resolve().parents[1]


def run_app(app: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "apps" / app), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mm") / "run"
    quick = ["data.train.steps=40", "data.train.eval_interval=20", "data.train.progress=false"]
    proc = run_app("train.py", "data=mm_digits", "model=mm_tiny", *quick, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_train_writes_a_captioner_and_its_metrics(captioner):
    run_dir, proc = captioner
    assert "held-out caption accuracy" in proc.stdout and "chance 10.0%" in proc.stdout
    for f in ("mm_config.json", "model.safetensors", "tokenizer.json"):
        assert (run_dir / "captioner" / f).is_file()
    metrics = json.loads((run_dir / "mm_metrics.json").read_text())
    assert metrics["final_test_loss"] < metrics["initial_test_loss"]
    assert metrics["config"]["steps"] == 40 and len(metrics["train_losses"]) == 40
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_infer_captions_an_image_and_rejects_audio(captioner, tmp_path):
    run_dir, _ = captioner
    examples = write_examples(tmp_path, count=1)
    proc = run_app("infer.py", "--ckpt", str(run_dir / "captioner"), "--image", examples[0]["file"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and proc.stdout.strip().isalpha()  # a (possibly wrong) word after 40 steps
    with pytest.raises(ValueError, match="not audio"):  # what infer.py --audio reports (in-process: faster)
        caption_file(run_dir / "captioner", examples[1]["file"], "audio")


def test_mm_data_with_a_text_model_config_is_a_clear_error(tmp_path):
    proc = run_app("train.py", "data=mm_audio", "model=tiny", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "model=mm_tiny" in proc.stderr
