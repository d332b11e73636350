"""DDP and FSDP2 on CPU (Gloo, 2 processes under torchrun) against single-process training.

With the same global batch (2 ranks x 2 sequences = 1 process x 4) and seed, the per-step losses, eval
losses and final weights of DDP and FSDP2 equal one-process training to 1e-5 (fp32). The same runs check
fault tolerance and resharding: rank 1 dies before step 15; with ``--max-restarts 1`` torchrun restarts
the job, which resumes from the step-10 sharded checkpoint and ends on the same curve; without restarts
the job exits with an error, its step-10 checkpoint whole, and resuming it on 1 process or on 2 processes
continues the same curve.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinylm.core import load_checkpoint
from tinylm.core.data import BatchIterator, PackedBlocks
from tinylm.dist import SingleDevice, Trainer, export_consolidated, is_sharded, read_metrics

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
_spec = importlib.util.spec_from_file_location("tinylm_dist_test_conftest", HERE / "conftest.py")
helpers = importlib.util.module_from_spec(_spec)  # the fixtures' helpers, without the fixture scope
_spec.loader.exec_module(helpers)
BLOCK = helpers.BLOCK
STEPS = 20
TRAIN = dict(max_steps=STEPS, eval_interval=10, checkpoint_interval=10, grad_accum_steps=2, resume=True)


def torchrun(spec: dict, max_restarts: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [f"--max-restarts={max_restarts}", str(WORKER), json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def single_trainer(out_dir: Path, **overrides) -> Trainer:
    def data(n, data_seed, seed):
        return BatchIterator(PackedBlocks(helpers._tokens(n, data_seed), BLOCK), 4, seed=seed)

    cfg = helpers._train_config(**{**TRAIN, "batch_size": 4, **overrides})
    return Trainer(
        helpers._tiny_model(seed=0),
        cfg,
        data(6000, 0, 1),
        data(2000, 1, 2),
        out_dir=out_dir,
        tokenizer=helpers.ByteTokenizer(),
        strategy=SingleDevice("cpu"),
    )


def curve(out_dir: Path, kind: str = "train", key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(Path(out_dir) / "metrics.jsonl", kind=kind)}


def assert_same_curve(got: dict[int, float], want: dict[int, float], steps) -> None:
    assert sorted(got) == list(steps)
    for step in steps:
        assert got[step] == pytest.approx(want[step], abs=1e-5, rel=0), step


@pytest.fixture(scope="module")
def workdir():
    """A private directory: pytest's numbered tmp dirs are pruned by other pytest sessions on a shared box,
    which must not happen under a minute-long multi-process run."""
    path = Path(tempfile.mkdtemp(prefix="tinylm-dist-parallel-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp_path(workdir, request) -> Path:
    path = workdir / request.node.name
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def reference(workdir) -> Path:
    """One process, batch 4, 20 steps: the curve every parallel run must reproduce."""
    torch.set_num_threads(1)
    out = workdir / "single"
    single_trainer(out).fit()
    return out


def spec(strategy: str, out: Path, **extra) -> dict:
    return {"strategy": strategy, "out": str(out), "batch": 2, "train": {**TRAIN, "batch_size": 2}, **extra}


def test_ddp_matches_one_process_and_survives_a_dying_rank_with_max_restarts(tmp_path, reference):
    marker = tmp_path / "crashed"
    run = torchrun(spec("ddp", tmp_path / "run", crash_before_step=15, crash_marker=str(marker)), 1)
    assert run.returncode == 0, run.stderr[-3000:]
    assert marker.exists()  # rank 1 really died once and torchrun restarted the job
    assert_same_curve(curve(tmp_path / "run"), curve(reference), range(1, STEPS + 1))
    assert_same_curve(
        curve(tmp_path / "run", "eval", "val_loss"), curve(reference, "eval", "val_loss"), [10, 20]
    )
    last = tmp_path / "run" / "checkpoints" / "last"
    assert is_sharded(last) and json.loads((last / "config.json").read_text())["dim"] == 32
    got, want = (
        load_file(str(last / "model.safetensors")),
        load_file(str(reference / "checkpoints/last/model.safetensors")),
    )
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)


@pytest.fixture(scope="module")
def fsdp2_crashed(workdir) -> Path:
    """An FSDP2 job whose rank 1 died before step 15, without restarts: the step-10 checkpoint is left."""
    out = workdir / "fsdp2"
    marker = out / "crashed"
    run = torchrun(spec("fsdp2", out / "run", crash_before_step=15, crash_marker=str(marker)))
    assert run.returncode != 0 and marker.exists(), run.stderr[-3000:]
    keep = out / "step10"
    shutil.copytree(out / "run" / "checkpoints" / "last", keep)
    return out


def test_a_dying_rank_ends_the_job_with_the_last_checkpoint_whole(fsdp2_crashed):
    checkpoints = fsdp2_crashed / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last"]  # no half-written temporary
    assert is_sharded(checkpoints / "last")
    assert {f.name for f in checkpoints.joinpath("last").glob("rank_state_*.pt")} == {
        "rank_state_0.pt",
        "rank_state_1.pt",
    }
    assert max(curve(fsdp2_crashed / "run")) == 14


def test_fsdp2_resumed_on_two_processes_matches_one_process(fsdp2_crashed, reference):
    run = torchrun(spec("fsdp2", fsdp2_crashed / "run", options={"reshard_after_forward": False}))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_curve(curve(fsdp2_crashed / "run"), curve(reference), range(1, STEPS + 1))
    assert_same_curve(
        curve(fsdp2_crashed / "run", "eval", "val_loss"), curve(reference, "eval", "val_loss"), [10, 20]
    )


def test_fsdp2_checkpoint_resumes_on_one_process(tmp_path, fsdp2_crashed, reference):
    (tmp_path / "checkpoints").mkdir()
    shutil.copytree(fsdp2_crashed / "step10", tmp_path / "checkpoints" / "last")
    trainer = single_trainer(tmp_path)
    assert trainer.step == 10 and trainer.tokens_seen == 10 * 2 * 4 * BLOCK
    trainer.fit()
    assert_same_curve(curve(tmp_path), curve(reference), range(11, STEPS + 1))
    want = load_file(str(reference / "checkpoints/last/model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():
        if name in want:
            torch.testing.assert_close(tensor, want[name], atol=1e-5, rtol=0, msg=name)


def test_export_consolidated_loads_with_tinylm_core(tmp_path, fsdp2_crashed):
    step10 = fsdp2_crashed / "step10"
    out = export_consolidated(step10, tmp_path / "export")
    model = load_checkpoint(out)
    saved = load_file(str(step10 / "model.safetensors"))  # gathered to rank 0 at save time
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert (out / "tokenizer.json").is_file()
    with pytest.raises(Exception, match="not a sharded checkpoint"):
        export_consolidated(out, tmp_path / "again")
