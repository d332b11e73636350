"""The experiments sandbox: a two-variant sweep end to end (table + PNG), and every preset composes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tinylm.core import ModelConfig, TinyLM
from tinylm.core.data import TASKS
from tinylm.dist.report import collect_runs, markdown_table, write_report

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "training.max_steps=12",
    "training.batch_size=16",
    "training.eval_interval=6",
    "data.num_documents=1200",
    "training.progress=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``apps/train.py -m experiment=routing`` over two routers, a dozen steps each (seconds on a CPU)."""
    base = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "TINYLM_DATA_CACHE": str(base / "cache"), "HYDRA_FULL_ERROR": "0"}
    args = [
        "-m",
        "experiment=routing",
        "+experiment/routing=moe,mod",
        *TINY,
        f"hydra.sweep.dir={base / 'sweep'}",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "apps" / "train.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "sweep", proc


def test_sweep_of_two_routers_ends_in_a_table_and_a_plot(sweep):
    sweep_dir, proc = sweep
    table = (sweep_dir / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| routing=")]
    assert [r.split(" | ")[0] for r in rows] == ["| routing=moe", "| routing=mod"]
    assert "| run | params | tokens/s | final train loss | best val loss | accuracy |" in table
    assert (sweep_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report.md" in proc.stdout
    runs = collect_runs(sweep_dir)
    assert [r["overrides"][0] for r in runs] == ["+experiment/routing=moe", "+experiment/routing=mod"]
    for run in runs:
        assert run["data"] == "induction" and run["steps"] == 12
        assert 0.0 <= run["task"]["accuracy"] <= 1.0 and run["tokens_per_s"] > 0
        cells = next(
            r for r in rows if r.startswith(f"| {run['overrides'][0][1:].removeprefix('experiment/')}")
        )
        assert f"{run['task']['accuracy']:.3f}" in cells and f"{run['best_val_loss']:.4f}" in cells
    moe, mod = runs
    utilisation = moe["routing"]["layers.0.mlp"]["utilisation"]
    assert len(utilisation) == 4 and sum(utilisation) == pytest.approx(1.0)
    assert mod["routing"]["layers.1"]["processed"] == pytest.approx(0.5)  # capacity 0.5 on layer 2 of 2
    assert 0.0 <= mod["routing_eval"]["layers.1"]["processed"] <= 1.0  # the causal predictor's choice
    config = json.loads((Path(mod["dir"]) / "checkpoints" / "last" / "config.json").read_text())
    assert config["router"] == "mod" and config["extra"]["mod"]["capacity"] == 0.5


def test_report_can_be_rerun_from_the_command_line(sweep, tmp_path):
    sweep_dir, _ = sweep
    md, png = write_report(sweep_dir)
    assert md.is_file() and png.is_file()
    assert markdown_table(collect_runs(sweep_dir)).count("\n") == 3  # header, rule, two runs
    with pytest.raises(FileNotFoundError, match="no run.json below"):
        write_report(tmp_path)


def preset_choices():
    """(preset, group, option) for every option a sandbox preset sweeps over."""
    for preset, group in [
        ("attention_variants", "attention"),
        ("routing", "routing"),
        ("positional", "positional"),
    ]:
        for f in sorted((ROOT / "conf" / "experiment" / group).glob("*.yaml")):
            yield preset, group, f.stem


@pytest.mark.parametrize(("preset", "group", "option"), list(preset_choices()))
def test_every_preset_option_composes_into_a_model(preset, group, option):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"experiment={preset}", f"+experiment/{group}={option}"])
    assert cfg.data.name in TASKS and cfg.tokenizer.name == "char"
    sweep = cfg.hydra.sweeper.params if "hydra" in cfg else None
    model = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if v is not None}
    config = ModelConfig.from_preset(model.pop("size"), vocab_size=40, **model)
    TinyLM(config)
    assert sweep is None or option in str(sweep)
