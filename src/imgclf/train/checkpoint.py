"""The checkpoint format (version 1), in one place: what is saved, how it is written and read back.

``out_dir/checkpoints/last.pt`` holds the full training state after every epoch and whenever
training stops; ``best.pt`` (weights only, ``kind: "best"``) is written when the monitored metric
improves. Resuming from ``last.pt`` continues exactly where the run stopped, mid-epoch included:
model, optimizer, loss scaler, step, history, callback state and RNG come back, and batches are
rebuilt from their seeds, so an interrupted run ends with the same weights as an uninterrupted one.
Files are written atomically (a temporary file renamed over the old one) and read with
``weights_only=True``: tensors and plain data, never arbitrary pickles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.errors import UserError
from imgclf.train.hooks import Callback

CHECKPOINT_FORMAT = "imgclf-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Position:
    """Where the loop stands: what a checkpoint saves besides weights and optimizer state."""

    step: int = 0
    epoch: int = 0  # index of the epoch in progress
    batch: int = 0  # batches done in that epoch
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # loss sum, correct, seen so far
    elapsed: float = 0.0  # training seconds, summed over resumes
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    stopped: str | None = None
    probe: dict[str, float] | None = None


@dataclass(frozen=True)
class RunSettings:
    """How the run was set up: stored so a resumed run trains the same way."""

    precision: str
    channels_last: bool
    threads: int
    total_steps: int
    config: dict[str, Any]
    meta: dict[str, Any]
    eval_split: str


def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def training_state(module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                   position: Position, settings: RunSettings, callbacks: Sequence[Callback],
                   device: torch.device) -> dict[str, Any]:
    """The dict ``last.pt`` holds."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": weights_of(module),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": position.step, "epoch": position.epoch, "batch": position.batch, "partial": list(position.partial),
        "total_steps": settings.total_steps, "elapsed": position.elapsed, "history": position.history,
        "best": position.best, "stopped": position.stopped,
        "callbacks": [{"type": type(cb).__name__, "state": cb.state_dict()} for cb in callbacks],
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "precision": settings.precision, "channels_last": settings.channels_last, "probe": position.probe,
        "threads": settings.threads,
        "config": settings.config, "meta": settings.meta, "eval_split": settings.eval_split,
    }


def restore(ckpt: dict[str, Any], module: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, callbacks: Sequence[Callback], device: torch.device,
            steps_per_epoch: int) -> Position:
    """Load ``ckpt`` into the model, optimizer, scaler, callbacks and RNG; return the loop's position."""
    module.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    pos = Position(step=int(ckpt["step"]), epoch=int(ckpt["epoch"]), batch=int(ckpt["batch"]),
                   partial=list(ckpt.get("partial") or [0.0, 0.0, 0]), elapsed=float(ckpt["elapsed"]),
                   history=list(ckpt["history"]), best=ckpt.get("best"), probe=ckpt.get("probe"))
    if pos.history and pos.history[-1].get("partial") and pos.batch < steps_per_epoch:
        pos.history.pop()  # the epoch cut short is finished now and recorded again, whole
    if ckpt.get("stopped") == "early_stopping":
        pos.stopped = "early_stopping"  # a finished decision; resuming does not undo it
    saved = ckpt.get("callbacks") or []
    for cb, st in zip(callbacks, saved, strict=False):
        if st["type"] == type(cb).__name__:
            cb.load_state_dict(st["state"])
    torch.set_rng_state(ckpt["rng"])
    if ckpt.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
    return pos


def saved_speed(ckpt: dict[str, Any]) -> tuple[str, bool, int | None] | None:
    """``(precision, channels_last, threads)`` the run chose before, so a resume skips the probe."""
    if not ckpt.get("precision"):
        return None
    threads = int(ckpt["threads"]) if ckpt.get("threads") else None
    return ckpt["precision"], bool(ckpt.get("channels_last")), threads


def improves(metric: str, value: Any, best: dict[str, Any] | None) -> bool:
    """Whether ``value`` of ``metric`` beats the best so far (lower is better for losses)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best["value"] if "loss" not in metric else value < best["value"]


def best_state(module: nn.Module, best: dict[str, Any], meta: dict[str, Any], eval_split: str) -> dict[str, Any]:
    """The dict ``best.pt`` holds: the weights and what made them best."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": "best",
            "model": weights_of(module), "best": best, "meta": meta, "eval_split": eval_split}


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by the trainer (tensors and plain data only: ``weights_only``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(2, "no such checkpoint", str(p))
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors come in many types
        raise UserError(f"{p} is not a readable checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{p} is not an imgclf checkpoint")
    return ckpt
