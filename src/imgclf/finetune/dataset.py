"""The user's folder, checked and summarised before any training starts.

Layouts (read by :mod:`imgclf.data`, the same reader as ``imgclf train``):

* ``FOLDER/<class>/*.jpg``: a seeded, stratified validation split is drawn from it;
* ``FOLDER/train/<class>/...`` with ``FOLDER/val/<class>/...`` and/or ``FOLDER/test/<class>/...``;
  without ``val`` the split is drawn from ``train``, and ``test`` is only scored at the end.

Every image is decoded once through :func:`imgclf.images.decode` and brought to the base model's
geometry by :func:`imgclf.preprocess.resize_and_crop` (cached on disk by the reader); files that
fail are listed and left out. A folder that cannot be trained on raises
:class:`imgclf.errors.UserError` saying why and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.data import RawDataset, decode_folder, scan_folder, split_off_val
from imgclf.errors import UserError
from imgclf.finetune.lineage import ExtraData, add_training_data
from imgclf.preprocess import PreprocessSpec
from imgclf.train.data import ImageSet

# Below this many images a class's accuracy is mostly noise; above this ratio the big classes
# dominate the loss. Both are warnings: the user may know better.
FEW_IMAGES = 20
IMBALANCE_RATIO = 3.0


@dataclass
class FolderData:
    """The checked folder: its splits as the trainer's :class:`~imgclf.train.data.ImageSet` (each
    with the files its images came from), what was skipped and what to warn about."""

    root: Path
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    val_from: str
    raw: RawDataset = field(repr=False)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extras: list[ExtraData] = field(default_factory=list)  # --add-data folders, in the train split

    @property
    def all_files(self) -> list[Path]:
        return [f for s in (self.train, self.val, self.test) if s is not None for f in s.files or []]

    def counts(self) -> dict[str, list[int]]:
        k = len(self.classes)
        out = {"train": self.train.counts(k).tolist(), "val": self.val.counts(k).tolist()}
        if self.test is not None:
            out["test"] = self.test.counts(k).tolist()
        return out

    def summary(self) -> str:
        """A readable table: one row per class with its image counts per split."""
        cols = self.counts()
        width = max(8, *(len(c) for c in self.classes))
        lines = [f"dataset {self.root}: {len(self.classes)} classes, validation = {self.val_from}",
                 f"  {'class':<{width}} " + " ".join(f"{name:>7}" for name in cols)]
        for i, c in enumerate(self.classes):
            lines.append(f"  {c:<{width}} " + " ".join(f"{n[i]:>7}" for n in cols.values()))
        lines.append(f"  {'total':<{width}} " + " ".join(f"{sum(n):>7}" for n in cols.values()))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"    {name}: {why}" for name, why in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def _check_layout(root: Path) -> None:
    if not root.exists():
        raise UserError(f"--data {root}: no such folder")
    if not root.is_dir():
        raise UserError(f"--data {root} is a file; give a folder with one subfolder of images per class")


def _check_classes(raw: RawDataset) -> None:
    root = raw.root
    if len(raw.classes) < 2:
        found = f" ({raw.classes[0]})" if raw.classes else ""
        raise UserError(
            f"{root} has {len(raw.classes)} class folder(s){found}; fine-tuning needs at least two: put "
            f"each class's images in its own subfolder, e.g. {root}/cats/*.jpg and {root}/dogs/*.jpg")
    counts = np.bincount(raw.splits["train"].labels, minlength=len(raw.classes))
    empty = [c for c, n in zip(raw.classes, counts, strict=True) if n == 0]
    if empty:
        raise UserError(f"class folder(s) with no image files: {', '.join(empty)} (.jpg, .png, .webp, .gif, "
                        ".bmp, .tif); add images or remove the folder")


def _images(raw: RawDataset, name: str) -> ImageSet | None:
    split = raw.split(name)
    return ImageSet.from_raw(split) if split is not None else None


def load_folder(root: str | os.PathLike[str], spec: PreprocessSpec, *, val_fraction: float = 0.2, seed: int = 0,
                cache_dir: Path | None = None, workers: int | None = None, progress: bool = True,
                use_cache: bool = True, add_data: Sequence[str | Path] = ()) -> FolderData:
    """Scan, split, check and decode a folder of class subfolders (see the module docstring);
    ``add_data``'s folders join the training split (:func:`imgclf.finetune.lineage.add_training_data`)."""

    root = Path(root).expanduser()
    _check_layout(root)
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    raw = scan_folder(root)
    _check_classes(raw)
    # A val/ folder is used as is; otherwise a stratified split of train (even when test/ exists:
    # the test split is only scored at the end, never used to pick an epoch).
    raw = split_off_val(raw, None if "val" in raw.splits else val_fraction, seed)
    extras = add_training_data(raw, add_data)
    totals = {c: 0 for c in raw.classes}
    for split in raw.splits.values():
        for label in split.labels:
            totals[raw.classes[label]] += 1
    try:
        decode_folder(raw, spec, cache_dir=cache_dir, workers=workers, progress=progress,
                      use_cache=use_cache)
    except UserError as exc:
        n_files = sum(totals.values())
        if raw.skipped and len(raw.skipped) == n_files:
            first, why = raw.skipped[0]
            raise UserError(f"none of the {n_files} image files under {root} could be decoded "
                            f"(first: {first}: {why})") from None
        raise UserError(f"{exc}: every file there failed to decode") from None
    readable = np.bincount(np.concatenate([s.labels for s in raw.splits.values()]), minlength=len(raw.classes))
    dead = [f"{c} ({totals[c]} files)" for c, n in zip(raw.classes, readable, strict=True) if n == 0]
    if dead:
        raise UserError(f"no readable images in class(es) {', '.join(dead)}: every file failed to decode "
                        f"(first: {raw.skipped[0][0]}: {raw.skipped[0][1]})")
    train, val, test = _images(raw, "train"), _images(raw, "val"), _images(raw, "test")
    assert train is not None
    if val is None or len(val) == 0:
        raise UserError(f"{root} has too few images to hold out a validation split; add images")
    data = FolderData(root, list(raw.classes), train, val, test, raw.val_from or "", raw, list(raw.skipped),
                      extras=extras)
    data.warnings = balance_warnings(data)
    return data


def balance_warnings(data: FolderData) -> list[str]:
    """Warnings for classes with too few images, strong imbalance and classes missing from val."""
    k = len(data.classes)
    total = data.train.counts(k) + data.val.counts(k)
    out = []
    few = [f"{c} ({int(n)})" for c, n in zip(data.classes, total, strict=True) if n < FEW_IMAGES]
    if few:
        out.append(f"few images in class(es) {', '.join(few)}: with under {FEW_IMAGES} images per class "
                   "accuracy is unreliable; add images if you can")
    if total.min() > 0 and total.max() / total.min() > IMBALANCE_RATIO:
        big, small = int(total.argmax()), int(total.argmin())
        out.append(f"classes are imbalanced: {data.classes[big]!r} has {int(total[big])} images, "
                   f"{data.classes[small]!r} {int(total[small])} ({total[big] / total[small]:.1f}x); "
                   "watch per-class recall in the confusion matrix")
    no_val = [c for c, n in zip(data.classes, data.val.counts(k), strict=True) if n == 0]
    if no_val:
        out.append(f"no validation images for class(es) {', '.join(no_val)}")
    return out
