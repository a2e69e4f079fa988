"""Image folders: ``ROOT/<class>/*.jpg``, or ``ROOT/train/<class>/...`` with ``val/`` and/or ``test/``.

Scanning lists files and labels only; :func:`imgclf.data.decode.decode_folder` decodes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgclf.data.dataset import RawDataset, RawSplit
from imgclf.errors import UserError
from imgclf.images import image_files

SPLIT_DIRS = ("train", "val", "test")


def class_dirs(root: Path) -> list[Path]:
    """The class folders directly under ``root``, sorted by name (hidden folders skipped)."""
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_folder(path: Path) -> RawDataset:
    """Find the layout: ``train/<class>`` with ``test/<class>`` and/or ``val/<class>``, or one level
    of class folders (split into train/val later by :func:`imgclf.data.splits.split_off_val`)."""
    if not path.is_dir():
        raise UserError(f"no such folder: {path}")
    split_dirs = {name: path / name for name in SPLIT_DIRS if (path / name).is_dir()}
    if "train" in split_dirs:
        classes = [d.name for d in class_dirs(split_dirs["train"])]
        layout = split_dirs
    else:
        classes = [d.name for d in class_dirs(path)]
        layout = {"train": path}
    if not classes:
        raise UserError(f"{path} has no class folders (expected {path}/<class>/*.jpg or {path}/train/<class>/...)")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, RawSplit] = {}
    for name, root in layout.items():
        files: list[Path] = []
        labels: list[int] = []
        for d in class_dirs(root):
            if d.name not in index:
                raise UserError(f"class folder {name}/{d.name} has no counterpart in train/ "
                                f"(classes: {', '.join(classes)})")
            found = image_files(d)
            files += found
            labels += [index[d.name]] * len(found)
        if not files and name == "train":
            raise UserError(f"no image files under {root}")
        if files:
            splits[name] = RawSplit(np.asarray(labels, dtype=np.int64), files=files)
    return RawDataset(path.name or "images", "folder", path, classes, splits)
