"""Benchmark TinyLM: ``uv run apps/bench.py mode=decode model=small batch_sizes=[1,8,32] baseline=hf``.

Hydra config (conf/bench.yaml + a conf/model preset) -> ``tinylm.core.bench.BenchConfig`` -> ``run_bench``
-> ``<name>.json``, ``<name>.md`` and ``<name>.png`` in Hydra's run dir (or ``out_dir``); the markdown table
is printed. Modes: train_step, prefill, decode, memory, kernels, quant, compare, time_to_target (see
README.md, "Benchmarks"). Installed plug-in packages (tinylm-cache, tinylm-quant) are imported first so
their caches and quantization schemes can be named. Config mistakes end in a one-line error and exit 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tinylm.core import ModelConfig
from tinylm.core.bench import BenchConfig, run_bench

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ("tinylm.cache", "tinylm.quant")  # register caches / quantization schemes when installed
log = logging.getLogger("bench")


def load_plugins() -> list[str]:
    """Import the plug-in packages that are installed; returns their names."""
    loaded = []
    for name in PLUGINS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise  # the plug-in is there but one of *its* imports is missing: say so
            continue
        loaded.append(name)
    return loaded


def build_config(cfg: DictConfig) -> BenchConfig:
    """``BenchConfig`` from the Hydra config: the model from its preset, paths made absolute."""
    values = OmegaConf.to_container(cfg, resolve=True)
    model_args = {k: v for k, v in values.pop("model").items() if v is not None}
    model = ModelConfig.from_preset(model_args.pop("size"), vocab_size=values.pop("vocab_size"), **model_args)
    values["out_dir"] = values["out_dir"] or HydraConfig.get().runtime.output_dir
    kernels_dir = Path(values["kernels_dir"])
    values["kernels_dir"] = str(kernels_dir if kernels_dir.is_absolute() else ROOT / kernels_dir)
    try:
        return BenchConfig(model=model, **values)
    except TypeError as e:  # an unknown key
        raise ValueError(f"bad bench config: {e}") from None


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        plugins = load_plugins()
        bench_cfg = build_config(cfg)
        log.info("mode %s%s", bench_cfg.mode, f" (plug-ins: {', '.join(plugins)})" if plugins else "")
        result = run_bench(bench_cfg, repo=ROOT)
        paths = result.save(bench_cfg.out_dir)
    except torch.OutOfMemoryError as e:
        print(
            f"error: out of memory ({str(e).splitlines()[0]}); lower batch_size/batch_sizes", file=sys.stderr
        )
        sys.exit(2)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(result.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
