"""The callback interface: the points where a :class:`Callback` sees the trainer, and what it sees.

A callback may change the run (set a param group's ``base_lr``, stop training, swap weights).
Anything it must remember across a resume goes in :meth:`Callback.state_dict`, which the trainer
stores in every checkpoint. Callbacks run on every DDP rank with identical inputs, so they make
identical decisions. The built-in ones live in :mod:`imgclf.train.callbacks`.

Hooks are typed against :class:`TrainerView`, the part of the trainer a callback may use, so this
module (and the callbacks) need not import the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn


class TrainerView(Protocol):
    """What callbacks read and change on :class:`~imgclf.train.loop.Trainer`."""

    module: nn.Module  # the bare model (not DDP- or compile-wrapped)
    optimizer: torch.optim.Optimizer  # param groups carry ``name`` and ``base_lr``
    step: int  # optimizer steps done
    total_steps: int
    epoch: int  # index of the epoch in progress
    history: list[dict[str, Any]]
    stopped: str | None

    @property
    def is_main(self) -> bool: ...

    def stop(self, reason: str) -> None: ...


class Callback:
    """Override any hook. ``logs`` is the epoch's history row (add keys to record more metrics)."""

    def on_fit_start(self, trainer: TrainerView) -> None: ...

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None: ...

    def on_step_end(self, trainer: TrainerView) -> None: ...

    def on_epoch_end(self, trainer: TrainerView, logs: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: TrainerView) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LambdaCallback(Callback):
    """Callback from plain functions, e.g. ``LambdaCallback(on_epoch_end=lambda t, logs: ...)``."""

    def __init__(self, **hooks: Callable[..., None]) -> None:
        for name, fn in hooks.items():
            if not name.startswith("on_") or not hasattr(Callback, name):
                raise ValueError(f"unknown hook {name!r}")
            setattr(self, name, fn)
