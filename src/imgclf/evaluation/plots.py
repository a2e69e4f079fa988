"""Plots of a run: learning curves, confusion matrices, the seed ladder, the worst-classified images.

matplotlib is optional and imported only when a plot is drawn; its object API on the Agg canvas is
used (no pyplot state, no display needed).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from imgclf.errors import UserError
from imgclf.images import ImageDecodeError
from imgclf.pipeline import load_pixels
from imgclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class PlottingUnavailable(UserError):
    """matplotlib is not installed (it comes with the ``torch`` extra)."""


def can_plot() -> bool:
    """Whether matplotlib is importable, so plots can be drawn."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(size: tuple[float, float]) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable("plots need matplotlib: pip install matplotlib") from None
    return Figure(figsize=size, dpi=100, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    return p


def _value(row: Mapping[str, Any], key: str) -> float:
    """A number of a history row; missing ones (no evaluation that epoch) leave a gap in the line."""
    v = row.get(key)
    return float("nan") if v is None else float(v)


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                         title: str = "", eval_split: str = "val") -> Path:
    """Loss (top) and accuracy (bottom) per epoch, train vs the evaluation split."""
    fig = _figure((7, 7))
    axes: list[Axes] = [fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)]
    x = [row.get("epoch_float", row["epoch"]) for row in history]
    for ax, key, label in ((axes[0], "loss", "Cross-entropy loss"), (axes[1], "acc", "Accuracy")):
        ax.plot(x, [_value(row, f"train_{key}") for row in history], color="tab:blue", label="train")
        if any(row.get(f"val_{key}") is not None for row in history):
            ax.plot(x, [_value(row, f"val_{key}") for row in history], color="tab:orange", label=eval_split)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_matrix(matrix: npt.ArrayLike, labels: Sequence[str], path: str | os.PathLike[str], *,
                          title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with the counts written in."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(labels)
    side = max(5.0, 0.45 * k + 2)
    fig = _figure((side + 1, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    # An extra last column counts predictions outside the dataset's classes.
    cols = list(labels) + (["other"] if m.shape[1] > k else [])
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(m.shape[1]):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "Confusion matrix (row-normalised)")
    return _save(fig, path)


def plot_ladder(steps: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Evaluation-split accuracy per epoch of every ladder step on one plot."""
    fig = _figure((8, 5))
    ax = fig.add_subplot(1, 1, 1)
    for s in steps:
        hist = s.get("history") or []
        if hist and any(r.get("val_acc") is not None for r in hist):
            ax.plot([r.get("epoch_float", r["epoch"]) for r in hist], [_value(r, "val_acc") for r in hist],
                    label=s["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("Seed ladder: accuracy on the evaluation split per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def worst_indices(probs: npt.NDArray[np.floating[Any]], targets: npt.ArrayLike, k: int) -> list[int]:
    """Rows with the lowest probability on their true class, worst first; only misclassified
    rows count, so a perfect model yields an empty list."""
    t = np.asarray(targets, dtype=np.int64)
    p_true = probs[np.arange(len(t)), t]
    wrong = probs.argmax(axis=1) != t
    return [int(i) for i in np.argsort(p_true, kind="stable") if wrong[i]][:k]


def save_worst_grid(path: str | os.PathLike[str], files: Sequence[Path], probs: npt.NDArray[np.floating[Any]],
                    targets: npt.ArrayLike, labels: Sequence[str], spec: PreprocessSpec, *, k: int = 16,
                    cols: int = 4) -> int:
    """A PNG grid of up to ``k`` worst-classified images (as the model saw them: the spec's resize
    and crop), captioned true / predicted / p(predicted): the quickest look at label noise and
    confusable classes. Returns how many were drawn."""
    t = np.asarray(targets, dtype=np.int64)
    rows_idx = worst_indices(probs, t, k)
    n = max(1, len(rows_idx))
    cols = max(1, min(cols, n))
    nrows = -(-n // cols)
    fig = _figure((2.4 * cols, 2.6 * nrows))
    if not rows_idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified validation images", ha="center", va="center")
    for slot, i in enumerate(rows_idx):
        ax = fig.add_subplot(nrows, cols, slot + 1)
        ax.axis("off")
        try:
            pixels = load_pixels(Path(files[i]).read_bytes(), spec)
        except (OSError, ImageDecodeError):
            continue
        gray = pixels.shape[-1] == 1
        ax.imshow(pixels[..., 0] if gray else pixels, cmap="gray" if gray else None)
        pred = int(probs[i].argmax())
        ax.set_title(f"true: {labels[int(t[i])]}\npred: {labels[pred]} ({probs[i, pred]:.0%})", fontsize=8)
    _save(fig, path)
    return len(rows_idx)
