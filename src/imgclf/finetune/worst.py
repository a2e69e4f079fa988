"""A grid of the validation images the model gets most wrong: the quickest look at label noise,
confusable classes and what the model actually keys on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgclf.images import ImageDecodeError, decode_file
from imgclf.preprocess import PreprocessSpec, resize_and_crop


def worst_indices(probs: np.ndarray, targets: np.ndarray, k: int) -> list[int]:
    """Rows with the lowest probability on their true class, worst first; only misclassified
    rows count, so a perfect model yields an empty list."""
    targets = np.asarray(targets)
    p_true = probs[np.arange(len(targets)), targets]
    wrong = probs.argmax(axis=1) != targets
    order = [int(i) for i in np.argsort(p_true, kind="stable") if wrong[i]]
    return order[:k]


def save_worst_grid(path: str | Path, files: Sequence[Path], probs: np.ndarray, targets: np.ndarray,
                    labels: Sequence[str], spec: PreprocessSpec, *, k: int = 16, cols: int = 4) -> int:
    """Write a PNG grid of up to ``k`` worst-classified images (as the model saw them: the spec's
    resize and crop), captioned true / predicted / p(predicted). Returns how many were drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows_idx = worst_indices(probs, targets, k)
    n = max(1, len(rows_idx))
    cols = max(1, min(cols, n))
    nrows = -(-n // cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    if not rows_idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified validation images", ha="center", va="center")
    for slot, i in enumerate(rows_idx):
        ax = fig.add_subplot(nrows, cols, slot + 1)
        ax.axis("off")
        try:
            pixels = resize_and_crop(decode_file(files[i]), spec)
        except (OSError, ImageDecodeError):
            continue
        ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray" if pixels.shape[-1] == 1 else None)
        pred = int(probs[i].argmax())
        ax.set_title(f"true: {labels[int(targets[i])]}\npred: {labels[pred]} ({probs[i, pred]:.0%})", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return len(rows_idx)
