"""The one trainer: every recipe and fine-tuning run through :class:`Trainer`.

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

Data
    ``train`` and ``val`` are :class:`~imgclf.train.data.Batches`: ``len()`` = batches per epoch and
    ``batches(epoch, start)`` yields ``(inputs, labels)``. :class:`~imgclf.train.data.TensorBatches`
    covers in-memory uint8 images (with an augmenting, normalising transform) and feature caches
    (float tensors, no transform); :class:`~imgclf.train.data.LoaderBatches` wraps a ``DataLoader``.
    Optional methods the trainer uses when present: ``to(device)`` (move the data once) and
    ``shard(rank, world)`` (DDP). Labels are class indices; the loss is ``loss_fn(logits, labels)``
    (default: cross-entropy with ``config.label_smoothing``), accuracy is top-1.

Parameters and learning rates
    ``param_groups``: list of dicts like torch optimizers take, each with ``params`` and any of
    ``lr`` (absolute), ``lr_scale`` (times ``config.lr``, default 1), ``weight_decay``, ``name``.
    Every trainable parameter must be in exactly one group. Frozen parts: set
    ``requires_grad=False`` before building the trainer (they are left out of the optimizer and of
    DDP, and BatchNorm layers whose parameters are all frozen stay in eval mode, so their running
    statistics do not drift). To stop or start updating a group mid-run, change its ``base_lr``
    from a callback (see :class:`~imgclf.train.callbacks.FreezeGroupAfter`). Each step sets
    ``lr = base_lr * schedule(step)``; ``config.schedule`` is ``constant``, ``linear`` or
    ``cosine`` (after ``warmup`` steps rising linearly from ``start_factor``, ending at
    ``final_factor``), or any ``f(progress in [0, 1]) -> factor``. ``optimizer`` is ``sgd``,
    ``adamw`` or ``adam``, or pass ``optimizer_factory(groups) -> torch.optim.Optimizer``.

Callbacks and history
    :class:`~imgclf.train.callbacks.Callback` hooks: ``on_fit_start``, ``on_epoch_start``,
    ``on_step_end``, ``on_epoch_end(trainer, logs)`` (add keys to ``logs`` to record metrics),
    ``on_fit_end``; their ``state_dict`` goes into checkpoints. Built in: ``EarlyStopping``,
    ``Lookahead``, ``FreezeGroupAfter``, ``LambdaCallback``. ``trainer.history`` is one dict per
    epoch (``epoch, epoch_float, step, lr`` (of the largest param group), ``train_loss, train_acc,
    val_loss, val_acc, time, elapsed, img_per_s``; an epoch cut short by a stop has
    ``partial: true``; train metrics are running means over the epoch's augmented batches), written to ``history.csv`` and
    ``history.json`` after every epoch. ``val_*`` is whatever ``val`` holds; say which split that is
    with ``eval_split`` (recorded in ``history.json``).

Checkpoints, resume, stopping
    ``out_dir/checkpoints/last.pt`` after every epoch and whenever training stops; ``best.pt``
    (weights only) when ``config.monitor`` improves. ``fit(resume=True)`` continues from
    ``last.pt`` exactly where it stopped, mid-epoch included: model, optimizer, step, history,
    callback state and RNG come back, and batches are rebuilt from their seeds, so an interrupted
    run ends with the same weights as an uninterrupted one. ``config.time_budget`` (seconds,
    counted across resumes) ends training cleanly after the step that crosses it; the partial
    epoch is evaluated and recorded. Ctrl-C (SIGINT) or SIGTERM stops after the current step and
    saves ``last.pt`` (``result.stopped == "interrupted"``); a second Ctrl-C aborts at once.
    ``trainer.stop(reason)`` lets callbacks end training (EarlyStopping uses ``early_stopping``).

Speed
    ``precision``: ``fp32``, ``bf16`` (autocast; weights stay fp32), ``fp16`` (CUDA, with loss
    scaling) or ``auto``: on CUDA bf16 where supported; on a CPU with native bf16 it times a few
    real training steps in fp32 and bf16 (and NCHW vs channels-last when ``channels_last`` is
    ``None``) on a copy of the model and keeps the fastest, then (``probe_threads``, one process)
    tries the winner on a single thread, which wins when other work shares the cores: oneDNN's
    bf16 kernels synchronise their threads often. ``compile=True`` wraps the model in
    ``torch.compile``. :func:`configure_cpu` sets the thread count (cores / local processes).

Distributed
    Launched by ``torchrun``, call :func:`init_distributed` first (gloo on CPU, nccl on GPU); the
    trainer then wraps the model in DDP, shards ``train`` and ``val`` (``batch_size`` stays the
    global batch), averages evaluation metrics over ranks, agrees on stop decisions (time budget,
    Ctrl-C, early stopping) every step, and only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from imgclf.train.callbacks import Callback
from imgclf.train.data import Batches

CHECKPOINT_FORMAT = "imgclf-checkpoint"
CHECKPOINT_VERSION = 1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
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
        if self.optimizer not in ("sgd", "adamw", "adam"):
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


# ---------------------------------------------------------------------------------------------
# process-level setup
# ---------------------------------------------------------------------------------------------


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1).

    Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` for a plain process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return dist.get_rank(), dist.get_world_size(), local_rank


def configure_cpu(threads: int | None = None, local_processes: int | None = None) -> int:
    """Intra-op threads: ``threads``, else ``IMGCLF_THREADS``, else this process's share of the CPUs.

    Returns the number set. ``OMP_WAIT_POLICY=PASSIVE`` (set by the CLI before torch loads) keeps
    idle OpenMP threads from spinning on shared machines.
    """
    from imgclf.engine import default_threads

    procs = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = threads or max(1, default_threads() // max(1, procs))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; keep what is there
        pass
    return n


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    """The schedule's multiplier for ``step`` (0-based) of ``total``."""
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


def _set_bn_eval_if_frozen(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def _atomic_save(obj: Any, path: Path) -> None:
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
        from imgclf.errors import UserError

        raise UserError(f"{p} is not a readable checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        from imgclf.errors import UserError

        raise UserError(f"{p} is not an imgclf checkpoint")
    return ckpt


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, model: nn.Module, train: Batches, *, val: Batches | None = None,
                 config: TrainConfig | None = None, param_groups: Sequence[dict[str, Any]] | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 callbacks: Sequence[Callback] = (), out_dir: str | os.PathLike[str] | None = None,
                 meta: dict[str, Any] | None = None, device: str | torch.device | None = None,
                 eval_split: str = "val",
                 optimizer_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None) -> None:
        self.config = config or TrainConfig()
        self.module = model  # the bare model (callbacks read and write its weights)
        self.net: nn.Module = model  # what is called in training: maybe DDP- and/or compile-wrapped
        self.train_data, self.val_data = train, val
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.device = torch.device(device) if device is not None else default_device()
        self.eval_split = eval_split
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing))
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
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self._interrupt = False
        self._bar: Any = None  # the tqdm bar while fit() runs
        self._threads_before = self.threads

    # -- small helpers -----------------------------------------------------------------------

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

    def _autocast(self):  # noqa: ANN202 - a context manager
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.dim() == 4:
            # Always pin the layout: augmented batches come out channels-last, and a channels-last
            # input alone switches oneDNN to channels-last kernels, whatever the probe chose.
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x

    def _main_lr(self) -> float:
        """Current rate of the group holding the most parameters (what the history reports)."""
        group = max(self.optimizer.param_groups, key=lambda g: sum(p.numel() for p in g["params"]))
        return float(group["lr"])

    def _log(self, msg: str) -> None:
        if self.is_main and self.config.log_epochs:
            bar = self._bar
            if bar is not None and not bar.disable:
                bar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)

    # -- setup -------------------------------------------------------------------------------

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg = self.config
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        specs = self._groups_spec if self._groups_spec is not None else [{"params": trainable}]
        seen: set[int] = set()
        groups = []
        for i, spec in enumerate(specs):
            g = dict(spec)
            g["params"] = list(g["params"])
            for p in g["params"]:
                if not p.requires_grad:
                    raise ValueError(f"param group {g.get('name', i)} holds a frozen parameter; leave frozen ones out")
                if id(p) in seen:
                    raise ValueError(f"a parameter appears in two param groups (group {g.get('name', i)})")
                seen.add(id(p))
            lr, scale = g.pop("lr", None), g.pop("lr_scale", 1.0)
            g["base_lr"] = float(lr) if lr is not None else cfg.lr * float(scale)
            g["lr"] = g["base_lr"]
            g.setdefault("weight_decay", cfg.weight_decay)
            g.setdefault("name", f"group{i}")
            groups.append(g)
        missing = [n for n, p in self.module.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ValueError(f"trainable parameters in no param group: {missing[:5]}; freeze them "
                             "(requires_grad=False) or add them to a group")
        return groups

    def _make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        if self._optimizer_factory is not None:
            opt = self._optimizer_factory(groups)
            for g in opt.param_groups:
                g.setdefault("base_lr", g["lr"])
            return opt
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                                   weight_decay=cfg.weight_decay)
        cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    def _candidates(self, sample: torch.Tensor) -> tuple[list[str], list[bool]]:
        cfg = self.config
        cuda = self.device.type == "cuda"
        if cfg.precision != "auto":
            precisions = [cfg.precision]
        elif cuda:
            precisions = ["bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
        else:
            precisions = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
        if sample.dim() != 4:
            layouts = [False]
        elif cfg.channels_last is not None:
            layouts = [cfg.channels_last]
        else:
            layouts = [True] if cuda else [False, True]
        if "fp16" in precisions and not cuda:
            raise ValueError("fp16 training needs a CUDA device; use bf16 or fp32 on the CPU")
        return precisions, layouts

    def _probe_speed(self, x: torch.Tensor, y: torch.Tensor, precisions: list[str],
                     layouts: list[bool]) -> tuple[str, bool, dict[str, float]]:
        """Time forward+backward passes per option on a copy of the model; keep the fastest.

        On a CPU it then tries the winner on one thread: when other processes share the cores,
        oneDNN's bf16 kernels, full of thread barriers, can run several times faster on one.
        """
        rng = torch.get_rng_state()  # the probe's dropout draws must not shift the run's randomness
        net = copy.deepcopy(self.module).train()
        x, y = x[:256], y[:256]  # relative speed is what matters; keep big-batch probes short
        saved = self.precision, self.channels_last
        threads = torch.get_num_threads()

        def rate(prec: str, cl: bool) -> float:
            fmt = torch.channels_last if cl else torch.contiguous_format
            net.to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            self.precision = prec

            def once() -> None:
                with self._autocast():
                    out = net(xx)
                self.loss_fn(out.float(), y).backward()
                net.zero_grad(set_to_none=True)

            once()
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
            return len(xx) * self.world / min(times)

        rates = {f"{p}{'+channels_last' if cl else ''}": rate(p, cl) for cl in layouts for p in precisions}
        best = max(rates, key=rates.__getitem__)
        prec, cl = best.split("+")[0], best.endswith("+channels_last")
        if (self.config.probe_threads and self.device.type == "cpu" and self.world == 1 and threads > 1):
            torch.set_num_threads(1)
            one = rate(prec, cl)
            rates[f"{best}@1thread"] = one
            if one > rates[best]:
                threads = 1
            torch.set_num_threads(threads)
        self.threads = threads
        self.precision, self.channels_last = saved
        torch.set_rng_state(rng)
        if self.world > 1:  # every rank must make the same choice
            t = torch.tensor(list(rates.values()), dtype=torch.float64, device=self._sync_device)
            dist.all_reduce(t)
            rates = {k: float(v) / self.world for k, v in zip(rates, t.tolist(), strict=True)}
            best = max((k for k in rates if "@" not in k), key=rates.__getitem__)
            prec, cl = best.split("+")[0], best.endswith("+channels_last")
        return prec, cl, rates

    @property
    def _sync_device(self) -> torch.device:
        return self.device if dist.is_initialized() and dist.get_backend() == "nccl" else torch.device("cpu")

    def _setup(self, ckpt: dict[str, Any] | None) -> None:
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
        if ckpt is not None and ckpt.get("precision"):
            self.precision, self.channels_last = ckpt["precision"], bool(ckpt.get("channels_last"))
            if ckpt.get("threads") and self.device.type == "cpu" and self.world == 1:
                self.threads = min(int(ckpt["threads"]), torch.get_num_threads())
                torch.set_num_threads(self.threads)
        else:
            x, y = next(iter(self.train_data.batches(0)))
            x, y = x.to(self.device), y.to(self.device)
            precisions, layouts = self._candidates(x)
            if len(precisions) * len(layouts) > 1:
                self.precision, self.channels_last, self.probe = self._probe_speed(x, y, precisions, layouts)
                if self.is_main:
                    rates = ", ".join(f"{k} {v:.0f}" for k, v in self.probe.items())
                    print(f"speed probe (img/s): {rates} -> {self.precision}"
                          f"{' + channels_last' if self.channels_last else ''}, {self.threads} thread(s)",
                          file=sys.stderr)
            else:
                self.precision, self.channels_last = precisions[0], layouts[0]
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.optimizer = self._make_optimizer(self._param_groups())
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
        self.net = self.module
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # A weight with a size-1 dim (a 1-channel input conv) has two valid stride sets; oneDNN
            # returns its grad in the other one and DDP warns on every step although it just copies
            # such a small grad into its bucket.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.net = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        if cfg.compile:
            self.net = torch.compile(self.net)

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "epoch": self.epoch, "batch": self._batch, "partial": list(self._partial),
            "total_steps": self.total_steps, "elapsed": self.elapsed, "history": self.history,
            "best": self.best, "stopped": self.stopped,
            "callbacks": [{"type": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks],
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "precision": self.precision, "channels_last": self.channels_last, "probe": self.probe,
            "threads": self.threads,
            "config": self.config.to_dict(), "meta": self.meta, "eval_split": self.eval_split,
        }

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self._batch = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["batch"])
        self._partial = list(ckpt.get("partial") or [0.0, 0.0, 0])
        self._elapsed_base, self.history, self.best = float(ckpt["elapsed"]), list(ckpt["history"]), ckpt.get("best")
        if self.history and self.history[-1].get("partial") and self._batch < self.steps_per_epoch:
            self.history.pop()  # the epoch cut short is finished now and recorded again, whole
        if ckpt.get("stopped") == "early_stopping":
            self.stopped = "early_stopping"  # a finished decision; resuming does not undo it
        self.probe = ckpt.get("probe")
        saved = ckpt.get("callbacks") or []
        for cb, st in zip(self.callbacks, saved, strict=False):
            if st["type"] == type(cb).__name__:
                cb.load_state_dict(st["state"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)

    def save_checkpoint(self, name: str = "last.pt") -> Path | None:
        """Write the full training state (rank 0 only). Returns the path, or None without out_dir."""
        if self.checkpoint_dir is None or not self.is_main:
            return None
        path = self.checkpoint_dir / name
        _atomic_save(self.state_dict(), path)
        return path

    def _save_best(self, logs: dict[str, Any]) -> None:
        metric = self.config.monitor
        value = logs.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        higher = "loss" not in metric
        if self.best is not None and not (value > self.best["value"] if higher else value < self.best["value"]):
            return
        self.best = {"metric": metric, "value": value, "epoch": logs["epoch"], "step": self.step}
        if self.checkpoint_dir is not None and self.is_main:
            _atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": "best",
                          "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                          "best": self.best, "meta": self.meta, "eval_split": self.eval_split},
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
        if self.world > 1:
            sums = sums.to(self._sync_device)
            dist.all_reduce(sums)
        n = float(sums[2])
        return {"loss": float(sums[0]) / max(n, 1.0), "acc": float(sums[1]) / max(n, 1.0), "n": n}

    # -- the loop ----------------------------------------------------------------------------

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
            if self._interrupt:
                raise KeyboardInterrupt
            self._interrupt = True
            if self.is_main:
                print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)",
                      file=sys.stderr, flush=True)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    def _should_stop(self) -> str | None:
        budget = self.config.time_budget
        over = budget is not None and self.elapsed >= budget
        flags = [float(self._interrupt), float(over), float(self.stopped is not None)]
        if self.world > 1:
            t = torch.tensor(flags, device=self._sync_device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = t.tolist()
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
        from tqdm import tqdm

        ckpt = None
        if resume:
            path = Path(resume) if not isinstance(resume, bool) else (
                self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None)
            if path is not None and path.is_file():
                ckpt = load_checkpoint(path)
        self.stopped = None
        self._setup(ckpt)
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
        self._bar = tqdm(total=self.total_steps, initial=self.step, unit="step", file=sys.stderr,
                         disable=not (progress and self.is_main), dynamic_ncols=True, leave=True)
        restore_signals = self._install_signals()
        try:
            while self.step < self.total_steps and self.stopped is None:
                if self._should_stop() == "interrupted":  # Ctrl-C during the last evaluation
                    self.stopped = "interrupted"
                    break
                self._run_epoch(n_epochs)
        finally:
            restore_signals()
            self._bar.close()
            self._bar = None
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
        self._bar.set_description(f"epoch {epoch + 1}/{n_epochs}")
        self.net.train()
        _set_bn_eval_if_frozen(self.module)
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
            self._bar.update(1)
            if self.step % cfg.log_every == 0 and not self._bar.disable:
                done = self._partial[2] + seen
                self._bar.set_postfix(loss=f"{(self._partial[0] + float(loss_sum)) / done:.4f}",
                                      acc=f"{(self._partial[1] + int(correct)) / done:.2%}",
                                      lr=f"{self._main_lr():.3g}", refresh=False)
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
        stats = torch.tensor(self._partial, dtype=torch.float64, device=self._sync_device)
        if self.world > 1:
            dist.all_reduce(stats)
        loss_sum, correct, seen = stats.tolist()
        logs: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "epoch_float": round(self.epoch + self._batch / self.steps_per_epoch, 4),
            "step": self.step,
            "lr": self._main_lr(),
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
        self._log(f"epoch {logs['epoch']}: train loss {logs['train_loss']:.4f} acc {logs['train_acc']:.2%}{val}"
                  f"  ({logs['time']:.1f}s{'' if complete else ', partial'})")
        if "val_acc" in logs:
            self._bar.set_postfix(**{f"{self.eval_split}_acc": f"{logs['val_acc']:.2%}"}, refresh=False)
        if complete:
            self.epoch += 1
            self._batch = 0
            self._partial = [0.0, 0.0, 0]
        self._write_history()
        self.save_checkpoint()


__all__ = [
    "Callback", "FitResult", "Trainer", "TrainConfig", "configure_cpu",
    "default_device", "init_distributed", "load_checkpoint", "lr_factor",
]
