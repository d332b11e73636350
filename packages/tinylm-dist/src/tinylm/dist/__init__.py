"""tinylm.dist: training at any scale (Trainer, optimizers, schedules, checkpoints)."""
