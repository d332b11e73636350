"""``torchrun --nproc-per-node 2 apps/train.py dist=ddp`` on CPU (Gloo) end to end, then apps/infer.py on
the sharded checkpoint it wrote, and a one-line error for a bad ``dist`` option."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["training=quick_test", "block_size=64", "data.num_documents=400", "training.progress=false"]


def env(cache: Path) -> dict:
    return {**os.environ, "TINYLM_DATA_CACHE": str(cache), "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def tmp_path():
    """Not pytest's numbered tmp dir: other pytest sessions on a shared box prune those mid-run."""
    path = Path(tempfile.mkdtemp(prefix="tinylm-dist-train-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_torchrun_ddp_trains_and_infer_loads_the_checkpoint(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    args = [*QUICK, "dist=ddp", "training.max_steps=10", "training.eval_interval=5"]
    args.append(f"hydra.run.dir={run_dir}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*cmd, str(ROOT / "apps" / "train.py"), *args],
        cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = run_dir / "checkpoints" / "last"
    assert (last / "dcp" / ".metadata").is_file()  # sharded (torch.distributed.checkpoint)
    assert {p.name for p in last.glob("rank_state_*.pt")} == {"rank_state_0.pt", "rank_state_1.pt"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # one writer: rank 0
    assert (run_dir / "loss.png").is_file() and (run_dir / "rank1" / "run.json").is_file()
    assert proc.stdout.count("best val loss") == 1  # the summary is printed by rank 0 only
    infer = subprocess.run(
        [sys.executable, str(ROOT / "apps" / "infer.py"), "--ckpt", str(last), "--prompt", "Once upon",
         "--max-new-tokens", "8", "--temperature", "0"],
        cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    assert infer.stdout.startswith("Once upon")


def test_bad_dist_option_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "apps" / "train.py"), *QUICK, "dist=ddp", "+dist.buckets=3",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env=env(tmp_path / "cache"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown dist.ddp options ['buckets']" in proc.stderr and "bucket_cap_mb" in proc.stderr
