"""The one trainer: every recipe and fine-tuning run through :class:`Trainer`.

This file is the loop and nothing else (setup order, the step, the epoch, evaluation, stopping);
it stays whole, over 400 lines with this guide, because the loop reads best in one piece.

Quick start::

    from imgclf.train.loop import Trainer, TrainConfig
    from imgclf.train.data import TensorBatches

    trainer = Trainer(
        model,                                   # any nn.Module: inputs -> (N, classes) logits
        train=TensorBatches(x, y, batch_size=128, shuffle=True, drop_last=True, transform=tf),
        val=TensorBatches(xv, yv, batch_size=512),
        config=TrainConfig(epochs=30, lr=0.05, optimizer="sgd", momentum=0.9, nesterov=True,
                           schedule="linear", warmup=0.1, label_smoothing=0.1),
        out_dir="runs/x",                        # checkpoints/, history.csv, history.json
        meta={"arch": "vgg3", "labels": [...]},  # stored in every checkpoint
    )
    result = trainer.fit(resume=True)            # resumes from runs/x/checkpoints/last.pt if present

Each part of a run lives in a module named by its job:
:mod:`~imgclf.train.config` (``TrainConfig``, ``FitResult``), :mod:`~imgclf.train.runtime`
(torchrun/DDP, device, threads), :mod:`~imgclf.train.params` (param groups, optimizer, frozen
parts), :mod:`~imgclf.train.schedule` (learning-rate schedule), :mod:`~imgclf.train.precision` and
:mod:`~imgclf.train.speed_probe` (fp32/bf16/fp16, channels-last, threads),
:mod:`~imgclf.train.checkpoint` (the checkpoint format, save and resume),
:mod:`~imgclf.train.signals` (Ctrl-C), :mod:`~imgclf.train.progress` (bar and epoch lines),
:mod:`~imgclf.train.hooks` (the callback interface) and :mod:`~imgclf.train.callbacks` (the built-in
callbacks). The names this module always offered (``TrainConfig``, ``load_checkpoint``,
``configure_cpu`` ...) are still importable from here.

Data
    ``train`` and ``val`` are :class:`~imgclf.train.data.Batches`: ``len()`` = batches per epoch and
    ``batches(epoch, start)`` yields ``(inputs, labels)``. Optional methods the trainer uses when
    present: ``to(device)`` (move the data once) and ``shard(rank, world)`` (DDP). Labels are class
    indices; the loss is ``loss_fn(logits, labels)`` (default: cross-entropy with
    ``config.label_smoothing``), accuracy is top-1.

History
    ``trainer.history`` is one dict per epoch (``epoch, epoch_float, step, lr`` (of the largest
    param group), ``train_loss, train_acc, val_loss, val_acc, time, elapsed, img_per_s``; an epoch
    cut short by a stop has ``partial: true``; train metrics are running means over the epoch's
    augmented batches), written to ``history.csv`` and ``history.json`` after every epoch.
    ``val_*`` is whatever ``val`` holds; say which split that is with ``eval_split``.

Stopping
    ``config.time_budget`` (seconds, counted across resumes) ends training cleanly after the step
    that crosses it; the partial epoch is evaluated and recorded. Ctrl-C or SIGTERM stops after the
    current step and saves ``last.pt`` (``result.stopped == "interrupted"``).
    ``trainer.stop(reason)`` lets callbacks end training (EarlyStopping uses ``early_stopping``).
    ``compile=True`` wraps the model in ``torch.compile``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from imgclf.train import checkpoint as ckpt_format
from imgclf.train.checkpoint import load_checkpoint
from imgclf.train.config import FitResult, TrainConfig
from imgclf.train.data import Batches
from imgclf.train.hooks import Callback
from imgclf.train.params import (
    OptimizerFactory,
    build_param_groups,
    freeze_frozen_norms,
    main_lr,
    make_optimizer,
)
from imgclf.train.precision import autocast, candidates, cpu_has_bf16
from imgclf.train.progress import TrainProgress
from imgclf.train.runtime import (
    all_reduce_sum,
    any_rank,
    configure_cpu,
    default_device,
    init_distributed,
    rank_and_world,
    wrap_for_training,
)
from imgclf.train.schedule import lr_factor
from imgclf.train.signals import StopOnSignal
from imgclf.train.speed_probe import describe, probe_speed

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    def __init__(self, model: nn.Module, train: Batches, *, val: Batches | None = None,
                 config: TrainConfig | None = None, param_groups: Sequence[dict[str, Any]] | None = None,
                 loss_fn: LossFn | None = None, callbacks: Sequence[Callback] = (),
                 out_dir: str | os.PathLike[str] | None = None, meta: dict[str, Any] | None = None,
                 device: str | torch.device | None = None, eval_split: str = "val",
                 optimizer_factory: OptimizerFactory | None = None) -> None:
        self.config = config or TrainConfig()
        self.module = model  # the bare model (callbacks read and write its weights)
        self.net: nn.Module = model  # what is called in training: maybe DDP- and/or compile-wrapped
        self.train_data, self.val_data = train, val
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.device = torch.device(device) if device is not None else default_device()
        self.eval_split = eval_split
        self.loss_fn: LossFn = loss_fn or self._cross_entropy
        self._groups_spec = param_groups
        self._optimizer_factory = optimizer_factory
        self.optimizer: torch.optim.Optimizer
        self.scaler: torch.amp.GradScaler | None = None
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.epoch = 0  # index of the epoch in progress
        self._batch = 0  # batches done in that epoch
        self._partial = [0.0, 0.0, 0]  # loss sum, correct, seen for the epoch in progress
        self.total_steps = 0
        self.steps_per_epoch = 0
        self._elapsed_base = 0.0  # training seconds before this fit() call (from a checkpoint)
        self._t_session: float | None = None
        self.stopped: str | None = None
        self.best: dict[str, Any] | None = None
        self.precision = "fp32"
        self.channels_last = False
        self.probe: dict[str, float] | None = None
        self.threads = torch.get_num_threads()
        self.rank, self.world = rank_and_world()
        self._signals = StopOnSignal(announce=self.is_main)
        self._progress: TrainProgress | None = None  # while fit() runs
        self._threads_before = self.threads

    # -- small helpers -----------------------------------------------------------------------

    def _cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    @property
    def elapsed(self) -> float:
        """Seconds spent in fit(), summed over resumes."""
        running = time.perf_counter() - self._t_session if self._t_session is not None else 0.0
        return self._elapsed_base + running

    def stop(self, reason: str) -> None:
        """Ask training to end after the current step (or at this epoch's end, from ``on_epoch_end``)."""
        if self.stopped is None:
            self.stopped = reason

    def _autocast(self) -> AbstractContextManager[object]:
        return autocast(self.precision, self.device)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4:
            # Always pin the layout: augmented batches come out channels-last, and a channels-last
            # input alone switches oneDNN to channels-last kernels, whatever the probe chose.
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x

    # -- setup -------------------------------------------------------------------------------

    def _choose_speed(self, saved: tuple[str, bool, int | None] | None) -> None:
        """Precision, layout and threads: from the checkpoint when resuming, else probed or as asked."""
        cfg = self.config
        if saved is not None:
            self.precision, self.channels_last, threads = saved
            if threads and self.device.type == "cpu" and self.world == 1:
                self.threads = min(threads, torch.get_num_threads())
                torch.set_num_threads(self.threads)
            return
        x, y = next(iter(self.train_data.batches(0)))
        x, y = x.to(self.device), y.to(self.device)
        precisions, layouts = candidates(cfg.precision, cfg.channels_last, self.device, x)
        if len(precisions) * len(layouts) == 1:
            self.precision, self.channels_last = precisions[0], layouts[0]
            return
        choice = probe_speed(self.module, x, y, self.loss_fn, device=self.device, precisions=precisions,
                             layouts=layouts, world=self.world, try_one_thread=cfg.probe_threads)
        self.precision, self.channels_last, self.probe = choice.precision, choice.channels_last, choice.rates
        self.threads = choice.threads
        torch.set_num_threads(self.threads)
        if self.is_main:
            print(describe(choice), file=sys.stderr)

    def _setup(self, saved_speed: tuple[str, bool, int | None] | None) -> None:
        cfg = self.config
        self._threads_before = torch.get_num_threads()  # fit() may pick fewer; restored at the end
        torch.manual_seed(cfg.seed)
        self.module.to(self.device)
        for data in (self.train_data, self.val_data):
            if data is not None and hasattr(data, "to"):
                data.to(self.device)
            if data is not None and self.world > 1 and hasattr(data, "shard"):
                data.shard(self.rank, self.world)
        self.steps_per_epoch = len(self.train_data)
        if self.steps_per_epoch == 0:
            raise ValueError("the training data yields no batches (fewer examples than one batch?)")
        self.total_steps = math.ceil(self.steps_per_epoch * cfg.epochs)
        self._choose_speed(saved_speed)
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # (torch stubs lack it)
        self.optimizer = make_optimizer(build_param_groups(self.module, self._groups_spec, cfg), cfg,
                                        self._optimizer_factory)
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
        self.net = wrap_for_training(self.module, self.device, world=self.world,
                                     find_unused_parameters=cfg.find_unused_parameters, compile=cfg.compile)

    # -- checkpoints (the format: imgclf.train.checkpoint) -------------------------------------

    def _position(self) -> ckpt_format.Position:
        return ckpt_format.Position(self.step, self.epoch, self._batch, list(self._partial), self.elapsed,
                                    self.history, self.best, self.stopped, self.probe)

    def state_dict(self) -> dict[str, Any]:
        settings = ckpt_format.RunSettings(self.precision, self.channels_last, self.threads, self.total_steps,
                                           self.config.to_dict(), self.meta, self.eval_split)
        return ckpt_format.training_state(self.module, self.optimizer, self.scaler, self._position(), settings,
                                          self.callbacks, self.device)

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        pos = ckpt_format.restore(ckpt, self.module, self.optimizer, self.scaler, self.callbacks, self.device,
                                  self.steps_per_epoch)
        self.step, self.epoch, self._batch, self._partial = pos.step, pos.epoch, pos.batch, pos.partial
        self._elapsed_base, self.history, self.best, self.probe = pos.elapsed, pos.history, pos.best, pos.probe
        if pos.stopped is not None:
            self.stopped = pos.stopped

    def save_checkpoint(self, name: str = "last.pt") -> Path | None:
        """Write the full training state (rank 0 only). Returns the path, or None without out_dir."""
        if self.checkpoint_dir is None or not self.is_main:
            return None
        path = self.checkpoint_dir / name
        ckpt_format.atomic_save(self.state_dict(), path)
        return path

    def _save_best(self, logs: dict[str, Any]) -> None:
        metric = self.config.monitor
        if not ckpt_format.improves(metric, logs.get(metric), self.best):
            return
        self.best = {"metric": metric, "value": logs[metric], "epoch": logs["epoch"], "step": self.step}
        if self.checkpoint_dir is not None and self.is_main:
            ckpt_format.atomic_save(ckpt_format.best_state(self.module, self.best, self.meta, self.eval_split),
                                    self.checkpoint_dir / "best.pt")

    def _write_history(self) -> None:
        if self.out_dir is None or not self.is_main:
            return
        from imgclf.evaluation import write_history

        write_history(self.history, self.out_dir, eval_split=self.eval_split, meta={"stopped": self.stopped})

    # -- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data: Batches, model: nn.Module | None = None) -> dict[str, float]:
        """Mean loss and top-1 accuracy of ``model`` (default: the model being trained) on ``data``.

        Under DDP each rank evaluates its shard and the sums are combined.
        """
        net = model if model is not None else self.module
        was_training = net.training
        net.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        try:
            for x, y in data.batches(0):
                x, y = self._to_device(x), y.to(self.device)
                with self._autocast():
                    out = net(x)
                out = out.float()
                sums[0] += float(self.loss_fn(out, y)) * len(y)
                sums[1] += (out.argmax(1) == y).sum()
                sums[2] += len(y)
        finally:
            net.train(was_training)
        sums = all_reduce_sum(sums, self.device)
        n = float(sums[2])
        return {"loss": float(sums[0]) / max(n, 1.0), "acc": float(sums[1]) / max(n, 1.0), "n": n}

    # -- the loop ----------------------------------------------------------------------------

    def _should_stop(self) -> str | None:
        """Why training ends after this step, agreed by every rank (None: go on)."""
        budget = self.config.time_budget
        over = budget is not None and self.elapsed >= budget
        flags = any_rank([float(self._signals.requested), float(over), float(self.stopped is not None)],
                         self.device)
        if flags[0]:
            return "interrupted"
        if flags[1]:
            return "time_budget"
        if flags[2]:
            return self.stopped or "stopped"
        return None

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        factor = lr_factor(cfg, self.step, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        with self._autocast():
            out = self.net(x)
        loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            self.optimizer.step()
        with torch.no_grad():
            correct = (out.detach().argmax(1) == y).sum()
        return loss.detach(), correct

    def fit(self, resume: bool | str | os.PathLike[str] = False) -> FitResult:
        """Train until the configured epochs are done or something stops it; see the module doc.

        ``resume``: ``True`` continues from ``out_dir/checkpoints/last.pt`` when it exists, a path
        continues from that checkpoint. Call once per Trainer (it wraps the model for DDP).
        """
        ckpt = None
        if resume:
            path = Path(resume) if not isinstance(resume, bool) else (
                self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None)
            if path is not None and path.is_file():
                ckpt = load_checkpoint(path)
        self.stopped = None
        self._setup(ckpt_format.saved_speed(ckpt) if ckpt is not None else None)
        if ckpt is not None:
            self._load_state(ckpt)
            if self.is_main:
                print(f"resuming at step {self.step} of {self.total_steps} (epoch {self.epoch + 1}, "
                      f"batch {self._batch})", file=sys.stderr, flush=True)
        cfg = self.config
        n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self._t_session = time.perf_counter()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        progress = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        self._progress = TrainProgress(self.total_steps, self.step, show_bar=bool(progress and self.is_main),
                                       log_epochs=cfg.log_epochs and self.is_main)
        try:
            with self._signals:
                while self.step < self.total_steps and self.stopped is None:
                    if self._should_stop() == "interrupted":  # Ctrl-C during the last evaluation
                        self.stopped = "interrupted"
                        break
                    self._run_epoch(n_epochs)
        finally:
            self._progress.close()
        if self.stopped == "interrupted":
            last = self.save_checkpoint()
            if self.is_main and last:
                print(f"interrupted at step {self.step}; checkpoint saved to {last}", file=sys.stderr)
            return self._finish(last)
        self.stopped = self.stopped or "completed"
        for cb in self.callbacks:
            cb.on_fit_end(self)
        last = self.save_checkpoint()
        self._write_history()
        return self._finish(last)

    def _finish(self, last: Path | None) -> FitResult:
        self._elapsed_base, self._t_session = self.elapsed, None
        torch.set_num_threads(self._threads_before)
        best = self.checkpoint_dir / "best.pt" if self.checkpoint_dir is not None else None
        return FitResult(self.history, self.stopped or "completed", self.step, self.total_steps, self.elapsed,
                         self.precision, self.channels_last, self.probe, self.best, last,
                         best if best is not None and best.is_file() else None, self.threads)

    def _run_epoch(self, n_epochs: int) -> None:
        cfg = self.config
        epoch = self.epoch
        if self._batch == 0:
            self._partial = [0.0, 0.0, 0]
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
        bar = self._progress
        assert bar is not None
        bar.epoch(epoch, n_epochs)
        self.net.train()
        freeze_frozen_norms(self.module)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        t0 = time.perf_counter()
        reason = None
        for x, y in self.train_data.batches(epoch, self._batch):
            x, y = self._to_device(x), y.to(self.device)
            loss, corr = self._train_step(x, y)
            loss_sum += loss.double() * len(y)
            correct += corr
            seen += len(y)
            self.step += 1
            self._batch += 1
            for cb in self.callbacks:
                cb.on_step_end(self)
            if self.step % cfg.log_every == 0 and bar.shown:
                done = self._partial[2] + seen
                bar.step(loss=f"{(self._partial[0] + float(loss_sum)) / done:.4f}",
                         acc=f"{(self._partial[1] + int(correct)) / done:.2%}", lr=f"{main_lr(self.optimizer):.3g}")
            else:
                bar.step()
            if self.step >= self.total_steps:
                break
            reason = self._should_stop()
            if reason is not None:
                break
        train_time = time.perf_counter() - t0
        self._partial = [self._partial[0] + float(loss_sum), self._partial[1] + int(correct), self._partial[2] + seen]
        if reason == "interrupted":
            self.stopped = reason
            return
        if reason is not None:
            self.stopped = reason
        self._end_epoch(train_time, seen)

    def _end_epoch(self, train_time: float, seen_now: int) -> None:
        complete = self._batch >= self.steps_per_epoch
        stats = all_reduce_sum(torch.tensor(self._partial, dtype=torch.float64), self.device)
        loss_sum, correct, seen = stats.tolist()
        logs: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "epoch_float": round(self.epoch + self._batch / self.steps_per_epoch, 4),
            "step": self.step,
            "lr": main_lr(self.optimizer),
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
        }
        t_eval = time.perf_counter()
        if self.val_data is not None:
            ev = self.evaluate(self.val_data)
            logs["val_loss"], logs["val_acc"] = ev["loss"], ev["acc"]
        logs["time"] = round(train_time + time.perf_counter() - t_eval, 3)
        logs["elapsed"] = round(self.elapsed, 3)
        logs["img_per_s"] = round(seen_now * self.world / train_time, 1) if train_time > 0 and seen_now else None
        if not complete:
            logs["partial"] = True
        for cb in self.callbacks:
            cb.on_epoch_end(self, logs)
        self.history.append(logs)
        self._save_best(logs)
        val = (f"  {self.eval_split} loss {logs['val_loss']:.4f} acc {logs['val_acc']:.2%}"
               if "val_loss" in logs and "val_acc" in logs else "")
        bar = self._progress
        assert bar is not None
        bar.log(f"epoch {logs['epoch']}: train loss {logs['train_loss']:.4f} acc {logs['train_acc']:.2%}{val}"
                  f"  ({logs['time']:.1f}s{'' if complete else ', partial'})")
        if "val_acc" in logs:
            bar.note(**{f"{self.eval_split}_acc": f"{logs['val_acc']:.2%}"})
        if complete:
            self.epoch += 1
            self._batch = 0
            self._partial = [0.0, 0.0, 0]
        self._write_history()
        self.save_checkpoint()


# The names this module has always offered, now defined in the modules of their job.
__all__ = [
    "Callback", "FitResult", "Trainer", "TrainConfig", "configure_cpu", "cpu_has_bf16",
    "default_device", "init_distributed", "load_checkpoint", "lr_factor",
]
