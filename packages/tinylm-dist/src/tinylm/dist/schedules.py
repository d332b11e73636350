"""Learning-rate schedules as pure functions of the step: ``lr_at(step, cfg) -> float``.

``step`` is the 0-based index of the optimizer step about to be taken. Every schedule starts with the same
linear warmup, ``lr * (step + 1) / (warmup_steps + 1)`` (nanoGPT's), reaching the peak ``lr`` at
``step == warmup_steps``, and ends at ``min_lr`` at ``step == max_steps`` (later steps stay there).
After warmup, with ``p = (step - warmup_steps) / (max_steps - warmup_steps)``:

- ``cosine``: ``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` (Loshchilov & Hutter, SGDR, 2017)
- ``linear``: ``lr - (lr - min_lr) * p``
- ``constant``: ``lr``
- ``wsd`` (warmup-stable-decay; Hu et al., MiniCPM, 2024; Hägele et al., arXiv 2405.18392): flat at ``lr``,
  then the last ``decay_fraction`` of ``max_steps`` decays to ``min_lr``, linearly or as ``1 - sqrt``.

A new schedule is one function decorated with ``@SCHEDULES.register("name")``, taking the post-warmup step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from tinylm.core.registry import Registry


class ScheduleConfig(Protocol):
    """The fields a schedule reads (``TrainConfig`` has them all)."""

    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    schedule: str
    decay_fraction: float
    decay_shape: str


ScheduleFn = Callable[[int, ScheduleConfig], float]
SCHEDULES: Registry[ScheduleFn] = Registry("lr schedule")


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """The learning rate for 0-based optimizer step ``step`` under ``cfg.schedule``."""
    schedule = SCHEDULES.get(cfg.schedule)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    return schedule(min(step, cfg.max_steps), cfg)


def _progress(step: int, cfg: ScheduleConfig) -> float:
    """Fraction of the post-warmup steps done, in [0, 1]."""
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    return min(1.0, max(0.0, (step - cfg.warmup_steps) / span))


@SCHEDULES.register("cosine")
def cosine(step: int, cfg: ScheduleConfig) -> float:
    """Half a cosine from ``lr`` down to ``min_lr``."""
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * _progress(step, cfg))) * (cfg.lr - cfg.min_lr)


@SCHEDULES.register("linear")
def linear(step: int, cfg: ScheduleConfig) -> float:
    """A straight line from ``lr`` down to ``min_lr``."""
    return cfg.lr - (cfg.lr - cfg.min_lr) * _progress(step, cfg)


@SCHEDULES.register("constant")
def constant(step: int, cfg: ScheduleConfig) -> float:
    """``lr`` after warmup, for ever."""
    return cfg.lr


def wsd_decay_start(cfg: ScheduleConfig) -> int:
    """The first step of the wsd decay phase: ``max_steps - round(decay_fraction * max_steps)``."""
    decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
    return max(cfg.warmup_steps, cfg.max_steps - decay_steps)


@SCHEDULES.register("wsd")
def wsd(step: int, cfg: ScheduleConfig) -> float:
    """Stable at ``lr``, then the last ``decay_fraction`` of steps decays (``decay_shape``) to ``min_lr``."""
    start = wsd_decay_start(cfg)
    if step < start:
        return cfg.lr
    q = min(1.0, (step - start) / max(1, cfg.max_steps - start))
    if cfg.decay_shape == "sqrt":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - math.sqrt(q))
    if cfg.decay_shape != "linear":
        raise ValueError(f"train.decay_shape must be linear or sqrt, got {cfg.decay_shape!r}")
    return cfg.lr - (cfg.lr - cfg.min_lr) * q
