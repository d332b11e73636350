"""benchmarks/scaling.py end to end on CPU (Gloo, 1 and 2 processes): the script that measures DDP/FSDP2
scaling on GPUs, run on tiny sizes so its plumbing (launch, weak scaling, results) is checked in CI."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tinylm.dist.distributed import TORCHRUN_VARS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"


def test_ddp_matches_across_process_counts_and_nosync_really_skips_the_all_reduce(tmp_path):
    args = "--device cpu --gpus 1,2 --presets tiny --steps 2 --warmup 1 --strategies ddp,ddp_nosync"
    args += " --timeout 300"
    cmd = [sys.executable, str(SCRIPT), *args.split(), "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}  # torchrun sets its own
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads((tmp_path / "scaling.json").read_text())["runs"]
    failed = [(r["strategy"], r["gpus"], r["error"][-1500:]) for r in runs if "error" in r]
    assert not failed, failed
    loss = {(r["strategy"], r["gpus"]): r["final_loss"] for r in runs}
    assert set(loss) == {("ddp", 1), ("ddp", 2), ("ddp_nosync", 1), ("ddp_nosync", 2)}
    assert abs(loss["ddp", 1] - loss["ddp", 2]) < 1e-4  # same global batch, same training
    assert loss["ddp_nosync", 1] == loss["ddp", 1]  # one process: nothing to skip
    assert abs(loss["ddp_nosync", 2] - loss["ddp", 2]) > 1e-4  # replicas trained apart
    assert "loss check tiny ddp: spread" in proc.stdout and "ddp_nosync: spread" not in proc.stdout


def load_scaling():
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numa_binding_reaches_torchrun_before_the_script(tmp_path, capsys):
    import pytest

    scaling = load_scaling()
    args = scaling.parse_args(["--gpus", "1,2", "--numa-binding", "node"])
    cmd = scaling.torchrun_command(args, "large", "ddp", 2, 4, tmp_path / "r.json")
    assert cmd.index("--numa-binding=node") < cmd.index(str(SCRIPT)) < cmd.index("--worker")
    plain = scaling.torchrun_command(scaling.parse_args([]), "large", "ddp", 2, 4, tmp_path / "r.json")
    assert not [c for c in plain if c.startswith("--numa")]
    with pytest.raises(SystemExit):
        scaling.parse_args(["--device", "cpu", "--numa-binding", "node"])
    assert "needs --device cuda" in capsys.readouterr().err
    # the installed torchrun knows the flag and every mode the script offers
    help_text = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True,
                               text=True, timeout=120).stdout  # fmt: skip
    assert "--numa-binding" in help_text
    from torch.numa.binding import AffinityMode

    assert set(scaling.NUMA_MODES) == {m.value for m in AffinityMode}


def test_speedup_per_round_and_loss_check_over_launches():
    """Speedups pair the launches of one round; the loss check compares each GPU count's mean over its
    launches (a failed launch left out) and reports the launch-to-launch spread."""
    scaling = load_scaling()
    base = {"preset": "large", "strategy": "ddp", "state_gib_per_gpu": 2.0}
    one = {**base, "gpus": 1, "tokens_per_s": 100.0, "final_loss": 3.70}
    one.update(tokens_per_s_launches=[100.0, 90.0, 110.0], final_loss_launches=[3.70, 3.72, None])
    two = {**base, "gpus": 2, "tokens_per_s": 190.0, "final_loss": 3.69, "state_gib_per_gpu": 1.0}
    two.update(tokens_per_s_launches=[196.0, 180.0, None], final_loss_launches=[3.69, 3.73, 3.71])
    rows = [one, two]
    scaling.summarise(rows)
    assert two["speedup_rounds"] == [1.96, 2.0] and two["speedup"] == 1.9 and two["state_vs_1gpu"] == 0.5
    report = scaling.check_losses(rows)
    # means 3.71 and 3.71: the same training, though single launches differ by up to 0.04
    assert "spread 0.0000 over 2 GPU counts" in report and "PASS" in report and "up to 0.0400" in report
    two["final_loss_launches"] = [3.80, 3.79, 3.81]
    assert "FAIL" in scaling.check_losses(rows)
    old = {**two, "final_loss": 3.71}  # results written before launches were kept: the one loss
    del old["final_loss_launches"]
    assert scaling.launch_losses(old) == [3.71]
