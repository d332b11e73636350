"""tinylm.dist: training at any scale (Trainer, DDP / FSDP2 strategies, optimizers, schedules, checkpoints).

from tinylm.dist import TrainConfig, Trainer
summary = Trainer(model, TrainConfig(max_steps=1000), train_batches, val_batches, out_dir="runs/x").fit()
"""

from tinylm.dist.config import TrainConfig
from tinylm.dist.ddp import DDP
from tinylm.dist.distributed import ProcessGroupStrategy, init_distributed, torchrun_env
from tinylm.dist.fsdp import FSDP2
from tinylm.dist.metrics import MetricsLogger, format_summary, plot_loss_curve, read_metrics
from tinylm.dist.optim import build_optimizer, param_groups
from tinylm.dist.schedules import SCHEDULES, lr_at
from tinylm.dist.sharded_checkpoint import export_consolidated, is_sharded, rescale_data_state
from tinylm.dist.strategy import (
    SingleDevice,
    Strategy,
    apply_activation_checkpointing,
    build_strategy,
    resolve_device,
)
from tinylm.dist.train_state import (
    capture_rng_state,
    load_train_state,
    load_trainer_config,
    restore_rng_state,
    save_training_checkpoint,
    seed_everything,
)
from tinylm.dist.trainer import Trainer, TrainingDivergedError

__all__ = [
    "DDP",
    "FSDP2",
    "SCHEDULES",
    "MetricsLogger",
    "ProcessGroupStrategy",
    "SingleDevice",
    "Strategy",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "apply_activation_checkpointing",
    "build_optimizer",
    "build_strategy",
    "capture_rng_state",
    "export_consolidated",
    "format_summary",
    "init_distributed",
    "is_sharded",
    "load_train_state",
    "load_trainer_config",
    "lr_at",
    "param_groups",
    "plot_loss_curve",
    "read_metrics",
    "rescale_data_state",
    "resolve_device",
    "restore_rng_state",
    "save_training_checkpoint",
    "seed_everything",
    "torchrun_env",
]
