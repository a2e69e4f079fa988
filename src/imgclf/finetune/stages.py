"""The two stages of fine-tuning, each one run of the shared :class:`~imgclf.train.loop.Trainer`.

Stage 1 trains the new head on cached backbone features; stage 2 trains every layer with
layer-wise learning rates and augmentation on top of the base model's preprocessing. Both stop
early on validation accuracy and end with their best weights loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgclf.errors import UserError
from imgclf.finetune.backbone import Split
from imgclf.finetune.dataset import FolderData
from imgclf.finetune.options import FinetuneOptions
from imgclf.finetune.state import StageState
from imgclf.preprocess import PreprocessSpec
from imgclf.train.augment import get_preset
from imgclf.train.callbacks import EarlyStopping
from imgclf.train.checkpoint import load_checkpoint
from imgclf.train.config import FitResult, TrainConfig
from imgclf.train.data import ImageTransform, TensorBatches
from imgclf.train.loop import Trainer


@dataclass
class StageOutcome:
    epochs: float
    stopped: str
    best_val_acc: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, result: FitResult) -> StageOutcome:
        best = result.best["value"] if result.best else None
        return cls(result.epochs, result.stopped, best, round(result.elapsed, 1), list(result.history))

    def brief(self) -> StageState:
        """What ``state.json`` keeps of the stage."""
        return {"done": True, "epochs": self.epochs, "stopped": self.stopped, "best_val_acc": self.best_val_acc,
                "seconds": self.seconds, "history": self.history}


def _load_best(module: nn.Module, result: FitResult) -> None:
    if result.best_checkpoint is not None:
        module.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])


def load_stage_weights(module: nn.Module, stage_dir: Path) -> None:
    """The best (else last) weights a finished stage left in ``stage_dir/checkpoints``."""
    ckpts = stage_dir / "checkpoints"
    for name in ("best.pt", "last.pt"):
        if (ckpts / name).is_file():
            module.load_state_dict(load_checkpoint(ckpts / name)["model"])
            return
    raise UserError(f"{stage_dir} has no checkpoint to resume from; start again without --resume")


def train_head(split: Split, data: FolderData, features: torch.Tensor, opts: FinetuneOptions,
               run_dir: Path) -> FitResult:
    """Stage 1: the new head on cached backbone features (the backbone itself is not touched)."""
    n_train = len(data.train)
    f_train, f_val = features[:n_train], features[n_train:]
    batch = min(max(opts.batch_size, 64), n_train)
    train = TensorBatches(f_train, data.train.labels, batch_size=batch, shuffle=True,
                          drop_last=n_train >= 2 * batch, seed=opts.seed)
    val = TensorBatches(f_val, data.val.labels, batch_size=1024)
    config = TrainConfig(epochs=float(opts.freeze_epochs), lr=opts.lr, optimizer="adamw", weight_decay=1e-4,
                         schedule="cosine", label_smoothing=opts.label_smoothing, precision="fp32",
                         seed=opts.seed, monitor="val_acc", progress=opts.progress)
    trainer = Trainer(split.head, train, val=val, config=config,
                      callbacks=[EarlyStopping("val_acc", patience=opts.patience)],
                      out_dir=run_dir / "stage1", meta={"stage": "head", "base": opts.base})
    result = trainer.fit(resume=opts.resume)
    if result.stopped != "interrupted":
        _load_best(split.head, result)
    return result


def layerwise_groups(split: Split, decay: float) -> list[dict[str, Any]]:
    """Param groups for stage 2: the head and the last backbone group at the full rate, each group
    nearer the input at ``decay`` times the rate of the one after it."""
    n = len(split.groups)
    groups: list[dict[str, Any]] = [{"params": params, "lr_scale": decay ** (n - 1 - i), "name": f"backbone{i}"}
                                    for i, params in enumerate(split.groups)]
    groups.append({"params": list(split.head.parameters()), "lr_scale": 1.0, "name": "head"})
    return groups


def train_all(split: Split, data: FolderData, spec: PreprocessSpec, opts: FinetuneOptions,
              run_dir: Path) -> FitResult:
    """Stage 2: every layer, layer-wise rates, augmentation on top of the base preprocessing."""
    net = split.net
    for p in net.parameters():
        p.requires_grad_(True)
    n_train = len(data.train)
    batch = min(opts.batch_size, n_train)
    train = TensorBatches(data.train.images, data.train.labels, batch_size=batch, shuffle=True,
                          drop_last=n_train >= 2 * batch, seed=opts.seed,
                          transform=ImageTransform(spec, get_preset(opts.augment)))
    val = TensorBatches(data.val.images, data.val.labels, batch_size=max(64, batch), transform=ImageTransform(spec))
    config = TrainConfig(epochs=float(opts.epochs), lr=opts.stage2_lr, optimizer="adamw", weight_decay=0.01,
                         schedule="cosine", warmup=0.1 if opts.epochs > 1 else 0.0, start_factor=0.1,
                         label_smoothing=opts.label_smoothing, seed=opts.seed, monitor="val_acc",
                         progress=opts.progress)
    trainer = Trainer(net, train, val=val, config=config, param_groups=layerwise_groups(split, opts.lr_decay),
                      callbacks=[EarlyStopping("val_acc", patience=opts.patience)],
                      out_dir=run_dir / "stage2", meta={"stage": "all", "base": opts.base})
    result = trainer.fit(resume=opts.resume)
    if result.stopped != "interrupted":
        _load_best(net, result)
    return result
