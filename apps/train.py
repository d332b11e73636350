"""Train a TinyLM: ``uv run apps/train.py [model=small] [data=text data.path=...] [training=quick_test]``.

Hydra config (conf/) -> tokenizer + tokenized data (tinylm-core) -> TinyLM (tinylm-core) -> Trainer
(tinylm-dist). Outputs (checkpoints, metrics.jsonl, loss.png) go to Hydra's run dir. Config mistakes
and missing data end in a one-line error and a non-zero exit code. Several processes:
``uv run torchrun --nproc-per-node 2 apps/train.py dist=ddp`` (or ``dist=fsdp2``); rank 0 logs and writes.
``quant=qat_int4`` (qat_int8, qat_8da4w) trains with fake quantization and saves the converted model to
``<run dir>/quantized``; ``quant=float8`` trains with torchao float8 linears (Hopper GPUs).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tinylm.core import CheckpointError, ModelConfig, TinyLM
from tinylm.core.data import BatchIterator, DataConfig, PackedBlocks, build_data
from tinylm.dist import TrainConfig, Trainer, build_strategy, seed_everything
from tinylm.dist.report import finish_run
from tinylm.mm import MM_DATASETS, run_captioner

log = logging.getLogger("train")


def plain(node: DictConfig) -> dict:
    """A config group as a dict without the null entries (null = keep the dataclass default)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def run(cfg: DictConfig) -> dict:
    train_cfg = TrainConfig(**plain(cfg.training))
    dist_args = plain(cfg.dist)
    strategy = build_strategy(dist_args.pop("name"), train_cfg.device, **dist_args)
    if not strategy.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    # torchrun: each rank's Hydra picks a run dir from its own clock; everyone writes into rank 0's
    out_dir = Path(strategy.broadcast_object(HydraConfig.get().runtime.output_dir))
    data_cfg = DataConfig(**plain(cfg.data))
    tok_cfg = plain(cfg.tokenizer)
    with strategy.main_first():  # rank 0 trains the tokenizer and fills the cache; the others read it
        tokenizer, splits = build_data(data_cfg, tok_cfg["name"], tok_cfg.get("vocab_size"))
    model_args = plain(cfg.model)
    model_cfg = ModelConfig.from_preset(model_args.pop("size"), vocab_size=tokenizer.vocab_size, **model_args)
    if cfg.block_size > model_cfg.max_seq_len:
        raise ValueError(f"block_size={cfg.block_size} is over model.max_seq_len={model_cfg.max_seq_len}")
    seed_everything(train_cfg.seed)  # same initial weights whatever ran before (a multirun's earlier jobs)
    model = TinyLM(model_cfg)
    if cfg.quant.scheme != "none":  # QAT / float8; imported only then: torchao costs seconds of start-up
        from tinylm.quant import prepare_for_training

        model = prepare_for_training(model, cfg.quant.scheme, train_cfg.device)
    log.info("model: %s, %.2fM parameters", model_cfg.architecture, model.num_parameters() / 1e6)
    batch, seed = train_cfg.batch_size, train_cfg.seed
    shard = dict(rank=strategy.rank, world_size=strategy.world_size)  # each block once per epoch
    train = BatchIterator(PackedBlocks(splits.train, cfg.block_size), batch, seed=seed, **shard)
    val = BatchIterator(PackedBlocks(splits.val, cfg.block_size), batch, seed=seed + 1, **shard)
    trainer = Trainer(model, train_cfg, train, val, out_dir=out_dir, tokenizer=tokenizer, strategy=strategy)
    summary = trainer.fit()  # run.json: + task accuracy, routing stats; a multirun's report reads them
    if strategy.is_main and cfg.quant.scheme != "none":  # QAT: convert + save to <run dir>/quantized
        from tinylm.quant import finish_training

        finish_training(trainer.model, cfg.quant.scheme, out_dir, tokenizer)
    overrides = list(HydraConfig.get().overrides.task)  # the report's run labels
    run_dir = out_dir if strategy.is_main else out_dir / f"rank{strategy.rank}"  # every rank: FSDP2 forwards
    result = finish_run(
        summary, trainer.model, tokenizer, data_cfg.name, run_dir, overrides, sample=next(val)[0]
    )
    strategy.close()
    return result


def run_captioner_job(cfg: DictConfig) -> dict:
    """data=mm_*: a tinylm-mm captioner, trained by its own loop (the text Trainer takes token batches)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    return run_captioner(plain(cfg.data), plain(cfg.model), out_dir, device=cfg.training.device)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run_captioner_job(cfg) if cfg.data.name in MM_DATASETS else run(cfg)
    except (ValueError, KeyError, FileNotFoundError, CheckpointError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
