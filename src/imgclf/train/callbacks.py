"""The built-in callbacks: early stopping, airbench's lookahead-EMA, freezing a param group.

Each is a small :class:`~imgclf.train.hooks.Callback` (the interface lives in
:mod:`imgclf.train.hooks`; ``Callback`` and ``LambdaCallback`` are importable from here too).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from imgclf.train.hooks import Callback, LambdaCallback, TrainerView


def _better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best`` the weights of the best epoch are put back when training stops early,
    so the exported model is the best one seen (Keras' ``restore_best_weights``).
    """

    def __init__(self, monitor: str = "val_loss", *, patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True) -> None:
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = mode if mode != "auto" else ("min" if "loss" in monitor else "max")
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._warned = False

    def on_epoch_end(self, trainer: TrainerView, logs: dict[str, Any]) -> None:
        value = logs.get(self.monitor)
        if value is None:
            if not self._warned and trainer.is_main:
                print(f"imgclf: warning: early stopping watches {self.monitor!r}, which this run does not "
                      "record (no validation split?)", file=sys.stderr)
            self._warned = True
            return
        if _better(float(value), self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = float(value), int(logs["epoch"]), 0
            if self.restore_best:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in trainer.module.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop("early_stopping")

    def on_fit_end(self, trainer: TrainerView) -> None:
        if self.restore_best and self.best_state is not None and trainer.stopped == "early_stopping":
            trainer.module.load_state_dict(self.best_state)
            if trainer.is_main:
                print(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.4f})",
                      file=sys.stderr)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_state = state.get("best_state")


class Lookahead(Callback):
    """airbench's lookahead-EMA: every ``every`` steps the weights move to an exponential moving
    average that is then copied back into the model; the EMA decay grows as
    ``base * (step / total) ** power``, and at the end the model takes the averaged weights."""

    def __init__(self, every: int = 5, base: float = 0.95**5, power: float = 3.0) -> None:
        self.every, self.base, self.power = every, base, power
        self.ema: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: TrainerView) -> None:
        if self.ema is None:
            self.ema = {k: v.detach().clone() for k, v in trainer.module.state_dict().items()}
        else:
            device = next(iter(trainer.module.state_dict().values())).device
            self.ema = {k: v.to(device) for k, v in self.ema.items()}

    @torch.no_grad()
    def _update(self, trainer: TrainerView, decay: float) -> None:
        assert self.ema is not None
        for key, param in trainer.module.state_dict().items():
            if param.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                ema = self.ema[key]
                ema.lerp_(param, 1 - decay)
                param.copy_(ema)

    def on_step_end(self, trainer: TrainerView) -> None:
        if trainer.step % self.every == 0:
            self._update(trainer, self.base * (trainer.step / trainer.total_steps) ** self.power)

    def on_fit_end(self, trainer: TrainerView) -> None:
        self._update(trainer, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else {k: v.cpu() for k, v in self.ema.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = state["ema"]


class FreezeGroupAfter(Callback):
    """Stop updating the param group named ``group`` from epoch ``epochs`` on (learning rate 0).

    Changing a rate, unlike ``requires_grad``, keeps DDP's view of the parameters unchanged.
    """

    def __init__(self, group: str, epochs: int) -> None:
        self.group, self.epochs = group, epochs

    def on_epoch_start(self, trainer: TrainerView, epoch: int) -> None:
        if epoch >= self.epochs:
            for g in trainer.optimizer.param_groups:
                if g.get("name") == self.group:
                    g["base_lr"] = 0.0


__all__ = ["Callback", "EarlyStopping", "FreezeGroupAfter", "LambdaCallback", "Lookahead"]
