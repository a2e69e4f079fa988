"""The learning-rate schedule: one multiplier per step, applied to every param group's ``base_lr``."""

from __future__ import annotations

import math

from imgclf.train.config import TrainConfig


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """The schedule's multiplier for ``step`` (0-based) of ``total``.

    ``warmup`` steps (a fraction of ``total``) rise linearly from ``start_factor`` to 1; then
    ``constant`` stays at 1, ``linear`` and ``cosine`` fall to ``final_factor``. A callable
    schedule gets the progress in [0, 1] and returns the factor.
    """
    if callable(config.schedule):
        return float(config.schedule(step / max(1, total)))
    warm = int(config.warmup * total)
    if step < warm:
        return config.start_factor + (1.0 - config.start_factor) * step / warm
    if config.schedule == "constant":
        return 1.0
    frac = min(1.0, (step - warm) / max(1, total - warm))
    if config.schedule == "linear":
        return 1.0 + (config.final_factor - 1.0) * frac
    return config.final_factor + (1.0 - config.final_factor) * 0.5 * (1.0 + math.cos(math.pi * frac))
