"""Validation splits: seeded and stratified, made on the file list so every run agrees on them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from imgclf.data.dataset import RawDataset
from imgclf.errors import UserError

Index = npt.NDArray[np.int64]


def stratified_split(labels: npt.NDArray[np.int64], fraction: float, seed: int) -> tuple[Index, Index]:
    """Indices (train, val): ``fraction`` of every class, chosen by a seeded shuffle, sorted."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    val: list[Index] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(idx)))
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)  # keep at least one of each class on both sides
        else:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_mask = np.ones(len(labels), bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), val_idx


def split_off_val(ds: RawDataset, val_fraction: float | None, seed: int) -> RawDataset:
    """Give the dataset a val split (in place). ``None`` means: keep a val/ folder if there is one,
    carve 20% out of train when the dataset has neither val nor test, else none (the test split is
    then the per-epoch evaluation set, as in the original CIFAR-10 experiments)."""
    if "val" in ds.splits:
        if val_fraction:
            raise UserError(f"{ds.root} has its own val split; drop --val-fraction")
        ds.val_from = "val folder"
        return ds
    if val_fraction is None:
        val_fraction = 0.0 if "test" in ds.splits else 0.2
    if val_fraction == 0:
        return ds
    train = ds.splits["train"]
    tr, va = stratified_split(train.labels, val_fraction, seed)
    ds.splits["train"], ds.splits["val"] = train.take(tr), train.take(va)
    ds.val_from = f"{val_fraction:g} of train (stratified, seed {seed})"
    return ds
