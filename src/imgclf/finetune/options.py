"""What ``imgclf finetune`` is asked to do: :class:`FinetuneOptions`, checked before anything runs, and
:class:`StatedOptions`, the options a caller stated (the rest are defaults, or on ``--resume`` the
run's saved ones: :func:`imgclf.finetune.state.resolve_options`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Required, TypedDict

from imgclf.errors import UserError

# Options that define a run (kept in the run state); --resume reuses them.
DEFINING = ("data", "base", "weights", "epochs", "freeze_epochs", "image_size", "augment", "lr", "finetune_lr",
            "lr_decay", "groups", "batch_size", "val_fraction", "patience", "seed", "label_smoothing", "tta", "name",
            "add_data", "parent", "version")
# What the checkpoints depend on: --resume may not change these (see imgclf.train.resume_options).
FIXED_ON_RESUME = ("data", "add_data", "base", "weights", "image_size", "groups", "val_fraction", "seed")


class StatedOptions(TypedDict, total=False):
    """The options a caller gave, by :class:`FinetuneOptions` field; absent or None: not given."""

    out: Required[str]
    resume: bool
    data: str | None
    add_data: list[str] | None
    parent: str | None
    version: str | None
    base: str | None
    weights: str | None
    name: str | None
    epochs: int | None
    freeze_epochs: int | None
    image_size: int | None
    augment: str | None
    lr: float | None
    finetune_lr: float | None
    lr_decay: float | None
    groups: int | None
    batch_size: int | None
    val_fraction: float | None
    patience: int | None
    seed: int | None
    label_smoothing: float | None
    tta: int | None
    cache_dir: str | None
    use_cache: bool | None
    allow_download: bool | None
    threads: int | None
    workers: int | None
    progress: bool | None


@dataclass
class FinetuneOptions:
    data: str
    out: str
    base: str = "efficientnet_lite0"
    weights: str | None = None
    name: str | None = None
    epochs: int = 5  # stage 2: the whole network
    freeze_epochs: int = 10  # stage 1: the head on cached features (cheap)
    image_size: int | None = None  # default: the base model's
    augment: str = "default"
    lr: float = 1e-3  # stage 1 (AdamW)
    finetune_lr: float | None = None  # stage 2, head and last group; default lr / 4
    lr_decay: float = 0.5  # stage 2: each group toward the input trains at this times the next one's rate
    groups: int = 4
    batch_size: int = 32
    val_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    label_smoothing: float = 0.1
    tta: int = 0  # 1: the package averages the logits of the image and its mirror image
    cache_dir: str | None = None
    use_cache: bool = True
    allow_download: bool = True
    threads: int | None = None
    workers: int | None = None
    progress: bool | None = None
    resume: bool = False
    add_data: list[str] = field(default_factory=list)  # extra class folders for training (feedback exports)
    parent: str | None = None  # the package this version follows (recorded; its labels must be kept)
    version: str = "1"  # the package's version

    @property
    def stage2_lr(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else self.lr / 4

    def check(self) -> None:
        from imgclf.train.augment import PRESETS

        if self.epochs < 0 or self.freeze_epochs < 0:
            raise UserError("--epochs and --freeze-epochs must be 0 or more")
        if self.epochs == 0 and self.freeze_epochs == 0:
            raise UserError("nothing to train: --epochs and --freeze-epochs are both 0")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise UserError(f"--image-size must be between 16 and 1024, got {self.image_size}")
        if self.augment not in PRESETS:
            raise UserError(f"--augment must be one of {', '.join(PRESETS)}, got {self.augment!r}")
        if self.lr <= 0 or self.stage2_lr <= 0:
            raise UserError("learning rates must be positive")
        if not 0 < self.lr_decay <= 1:
            raise UserError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.tta not in (0, 1):
            raise UserError(f"--tta must be 0 or 1, got {self.tta}")
        if self.batch_size < 1 or self.groups < 1 or self.patience < 1:
            raise UserError("--batch-size, --groups and --patience must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
