"""``run_bench``: config in, result out (the mode's rows plus the config and the environment)."""

from __future__ import annotations

from pathlib import Path

from tinylm.core.bench.config import BENCH_MODES, BenchConfig, resolve_device
from tinylm.core.bench.environment import collect_environment
from tinylm.core.bench.results import BenchResult

FILE_MODES = ("compare", "time_to_target")  # read earlier results: this machine's environment is not theirs


def run_bench(cfg: BenchConfig, repo: str | Path | None = None) -> BenchResult:
    """Run mode ``cfg.mode``; ``repo``: where git is asked for the commit (default: current directory)."""
    result = BENCH_MODES.get(cfg.mode)(cfg)
    result.name = cfg.name or result.name or cfg.mode
    if cfg.mode in FILE_MODES:  # the inputs carry their own config and environment
        result.config = {"mode": cfg.mode, "inputs": cfg.inputs, "target": cfg.target}
    else:
        result.config = cfg.to_dict()
        result.env = result.env or collect_environment(resolve_device(cfg.device), repo)
    return result
