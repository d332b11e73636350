"""apps/train.py and apps/infer.py end to end as subprocesses: artifacts, output, and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["training=quick_test", "block_size=64", "data.num_documents=400", "training.progress=false"]


def run_app(app: str, *args: str, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINYLM_DATA_CACHE": str(cache), "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "apps" / app), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quick training run shared by the tests below."""
    base = tmp_path_factory.mktemp("train")
    run_dir, cache = base / "run", base / "cache"
    proc = run_app("train.py", *QUICK, f"hydra.run.dir={run_dir}", cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, cache, proc


def test_train_writes_checkpoints_metrics_and_plot(trained):
    run_dir, _, proc = trained
    for name in ("last", "best"):
        ckpt = run_dir / "checkpoints" / name
        for f in ("model.safetensors", "config.json", "tokenizer.json", "train_state.pt", "trainer.json"):
            assert (ckpt / f).is_file(), f"{ckpt / f} missing"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r and "val_loss" not in r]
    val = [r for r in records if "val_loss" in r]
    assert train and val and train[-1]["step"] == 30
    assert train[-1]["loss"] < train[0]["loss"]  # it learned something
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run_dir / "checkpoints" / "last" / "config.json").read_text())
    assert config["architecture"] == "llama" and config["dim"] == 128  # the tiny preset
    assert "best val loss" in proc.stdout + proc.stderr


def test_infer_streams_a_continuation(trained):
    run_dir, cache, _ = trained
    proc = run_app(
        "infer.py", "--ckpt", str(run_dir / "checkpoints" / "best"), "--prompt", "Once upon",
        "--max-new-tokens", "20", "--temperature", "0", cache=cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon") and len(proc.stdout.strip()) > len("Once upon")
    again = run_app(
        "infer.py", "--ckpt", str(run_dir / "checkpoints" / "best"), "--prompt", "Once upon",
        "--max-new-tokens", "20", "--temperature", "0", cache=cache,
    )  # fmt: skip
    assert again.stdout == proc.stdout  # greedy is deterministic


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.architecture=mamba"], "unknown architecture 'mamba'"),
        (["data=text", "data.path=/no/such/file.txt"], "/no/such/file.txt"),
        (["data.name=nosuchdata"], "unknown dataset 'nosuchdata'"),
        (["model.norm=batchnorm"], "unknown norm 'batchnorm'"),
        (["block_size=4096"], "block_size=4096 is over model.max_seq_len=256"),
    ],
)
def test_train_bad_input_is_one_clear_line(args, message, tmp_path):
    proc = run_app("train.py", *QUICK, *args, f"hydra.run.dir={tmp_path}", cache=tmp_path / "cache")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_unknown_config_group_value(tmp_path):
    proc = run_app("train.py", "model=huge", f"hydra.run.dir={tmp_path}", cache=tmp_path)
    assert proc.returncode != 0
    assert "model/huge" in proc.stderr and "Available options" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_infer_bad_input(trained, tmp_path):
    run_dir, cache, _ = trained
    ckpt = str(run_dir / "checkpoints" / "best")
    cases = [
        (["--ckpt", str(tmp_path / "nope"), "--prompt", "hi"], "no such checkpoint directory"),
        (["--ckpt", ckpt, "--prompt", ""], "empty prompt"),
        (["--ckpt", ckpt, "--prompt", "word " * 400], "the model's context is 256"),
    ]
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (broken / f).write_bytes((Path(ckpt) / f).read_bytes())
    (broken / "model.safetensors").write_bytes((Path(ckpt) / "model.safetensors").read_bytes()[:100])
    cases.append((["--ckpt", str(broken), "--prompt", "hi"], "truncated or corrupt"))
    for args, message in cases:
        proc = run_app("infer.py", *args, cache=cache)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
