"""A run's per-epoch record: ``history.csv`` (one row per epoch) and ``history.json``."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imgclf.atomic import atomic_write

HISTORY_COLUMNS = ["epoch", "epoch_float", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                   "time", "elapsed", "img_per_s", "partial"]


def write_history(history: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str], *,
                  eval_split: str = "val", meta: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """``history.csv`` (one row per epoch) and ``history.json`` (the same plus run facts)."""
    out = Path(out_dir)
    extra = sorted({k for row in history for k in row} - set(HISTORY_COLUMNS))
    columns = HISTORY_COLUMNS + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    csv_path, json_path = out / "history.csv", out / "history.json"
    atomic_write(csv_path, buf.getvalue())
    atomic_write(json_path, json.dumps({"eval_split": eval_split, **(meta or {}), "epochs": list(history)},
                                       indent=2, default=str) + "\n")
    return csv_path, json_path


def read_history(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``history.json`` as written by :func:`write_history`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a history object")
    return data
