"""tinylm.dist: training at any scale (Trainer, optimizers, schedules, checkpoints).

from tinylm.dist import TrainConfig, Trainer
summary = Trainer(model, TrainConfig(max_steps=1000), train_batches, val_batches, out_dir="runs/x").fit()
"""

from tinylm.dist.config import TrainConfig
from tinylm.dist.metrics import MetricsLogger, format_summary, plot_loss_curve, read_metrics
from tinylm.dist.optim import build_optimizer, param_groups
from tinylm.dist.schedules import SCHEDULES, lr_at
from tinylm.dist.strategy import SingleDevice, Strategy, resolve_device
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
    "SCHEDULES",
    "MetricsLogger",
    "SingleDevice",
    "Strategy",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "build_optimizer",
    "capture_rng_state",
    "format_summary",
    "load_train_state",
    "load_trainer_config",
    "lr_at",
    "param_groups",
    "plot_loss_curve",
    "read_metrics",
    "resolve_device",
    "restore_rng_state",
    "save_training_checkpoint",
    "seed_everything",
]
