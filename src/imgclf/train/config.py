"""What a training run is asked to do (:class:`TrainConfig`) and what it did (:class:`FitResult`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("sgd", "adamw", "adam")


@dataclass
class TrainConfig:
    """Every knob of :class:`~imgclf.train.loop.Trainer`; see that module for what each does.

    ``schedule`` and ``warmup``/``start_factor``/``final_factor``: :func:`imgclf.train.schedule.lr_factor`.
    ``precision``/``channels_last``/``probe_threads``: :mod:`imgclf.train.speed_probe`.
    ``time_budget`` (seconds, counted across resumes) and ``monitor`` (the metric ``best.pt`` follows):
    :mod:`imgclf.train.checkpoint`.
    """

    epochs: float = 10.0
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str | Callable[[float], float] = "constant"
    warmup: float = 0.0
    start_factor: float = 0.0
    final_factor: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    time_budget: float | None = None
    monitor: str = "val_acc"
    progress: bool | None = None
    log_epochs: bool = True
    log_every: int = 10
    find_unused_parameters: bool = False
    probe_threads: bool = True

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.schedule, str) and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} or a function, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be sgd, adamw or adam, got {self.optimizer!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if callable(self.schedule):
            d["schedule"] = getattr(self.schedule, "__name__", "custom")
        d["betas"] = list(self.betas)
        return d


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    stopped: str  # completed | early_stopping | time_budget | interrupted | a callback's reason
    steps: int
    total_steps: int
    elapsed: float
    precision: str
    channels_last: bool
    probe: dict[str, float] | None = None
    best: dict[str, Any] | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    threads: int = 0  # CPU threads used (after the speed probe)

    @property
    def epochs(self) -> float:
        """Epochs trained, fractional when the last one was cut short."""
        return self.history[-1]["epoch_float"] if self.history else 0.0
