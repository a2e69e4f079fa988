"""Evaluate a model on a labelled dataset through the serving path.

Image files go through :func:`imgclf.pipeline.prepare` (the one decode path, then the model's
preprocessing spec), exactly as ``imgclf serve`` handles an upload; CIFAR/IDX arrays skip only the
decoding and go through the same :func:`imgclf.preprocess.preprocess`. Works with any engine
(ONNX Runtime over a package, or a torch model), and needs no torch for a package.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.engine import Engine
from imgclf.errors import UserError
from imgclf.images import ImageDecodeError
from imgclf.pipeline import prepare
from imgclf.preprocess import PreprocessSpec, preprocess
from imgclf.train.sources import RawDataset, RawSplit, as_rgb_or_gray


@dataclass
class ClassMetrics:
    label: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int


@dataclass
class Evaluation:
    split: str
    labels: list[str]  # the dataset's classes (rows of the confusion matrix)
    n: int
    accuracy: float
    top5: float | None  # when the model has more than five classes
    loss: float  # mean cross-entropy of the model's probabilities
    confusion: np.ndarray  # (K, K) or (K, K + 1): true class per row, last column "other"
    per_class: list[ClassMetrics]
    errors: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split, "n": self.n, "accuracy": self.accuracy, "top5": self.top5, "loss": self.loss,
            "labels": self.labels, "confusion": self.confusion.astype(int).tolist(),
            "per_class": [asdict(c) for c in self.per_class], "errors": [list(e) for e in self.errors],
        }


def label_map(classes: list[str], model_labels: list[str]) -> np.ndarray:
    """Model output index of each dataset class; every class must be one of the model's labels."""
    index = {name: i for i, name in enumerate(model_labels)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise UserError(f"the model has no label for dataset class(es) {', '.join(missing[:5])}; "
                        f"its labels start {', '.join(model_labels[:5])}")
    return np.asarray([index[c] for c in classes], dtype=np.int64)


def compute_metrics(split: str, classes: list[str], model_labels: list[str], y_true: np.ndarray,
                    probs: np.ndarray, errors: list[tuple[str, str]] | None = None) -> Evaluation:
    """Accuracy, top-5, cross-entropy, confusion matrix and per-class precision/recall/F1."""
    cls_to_model = label_map(classes, model_labels)
    model_to_cls = np.full(len(model_labels), len(classes), dtype=np.int64)  # K = "other"
    model_to_cls[cls_to_model] = np.arange(len(classes))
    k = len(classes)
    n = len(y_true)
    target = cls_to_model[y_true] if n else np.zeros(0, np.int64)
    pred = model_to_cls[probs.argmax(axis=1)] if n else np.zeros(0, np.int64)
    width = k + 1 if n and (pred == k).any() else k
    confusion = np.zeros((k, width), dtype=np.int64)
    np.add.at(confusion, (y_true, pred), 1)
    top5 = None
    if len(model_labels) > 5 and n:
        best5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        top5 = float((best5 == target[:, None]).any(axis=1).mean())
    p_true = probs[np.arange(n), target] if n else np.zeros(0)
    loss = float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()) if n else float("nan")
    per_class = []
    for c in range(k):
        tp = int(confusion[c, c])
        predicted = int(confusion[:, c].sum())
        support = int(confusion[c].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else
              (0.0 if precision is not None and recall is not None else None))
        per_class.append(ClassMetrics(classes[c], precision, recall, f1, support))
    accuracy = float(np.trace(confusion[:, :k]) / n) if n else float("nan")
    return Evaluation(split, list(classes), n, accuracy, top5, loss, confusion, per_class, list(errors or []))


def _inputs(split: RawSplit, spec: PreprocessSpec, workers: int) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(position, model input or None, error) per example, in order."""
    if split.files is not None:
        def load(i: int) -> tuple[int, np.ndarray | None, str | None]:
            path = split.files[i]  # type: ignore[index]
            try:
                return i, prepare(path.read_bytes(), spec), None
            except (ImageDecodeError, OSError) as exc:
                return i, None, str(exc) or type(exc).__name__

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            yield from pool.map(load, range(len(split)))
    else:
        assert split.images is not None
        for i, img in enumerate(split.images):
            yield i, preprocess(as_rgb_or_gray(img, spec), spec), None


def split_probabilities(engine: Engine, split: RawSplit, *, batch_size: int = 64, workers: int = 2,
                        progress: bool = False, desc: str = "evaluating"
                        ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Class probabilities of every readable example of ``split`` through the serving path, the
    positions they belong to, and ``(position, error)`` for the unreadable ones."""
    from tqdm import tqdm

    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            chunks.append(engine.probabilities(np.stack(pending)))
            pending.clear()

    with tqdm(total=len(split), unit="img", desc=desc, file=sys.stderr, disable=not progress) as bar:
        for i, x, err in _inputs(split, engine.spec, workers):
            if x is None:
                failed.append((i, err or "unreadable"))
            else:
                pending.append(x)
                kept.append(i)
                if len(pending) == batch_size:
                    flush()
            bar.update(1)
        flush()
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(engine.labels)), np.float32)
    return probs, kept, failed


def evaluate_engine(engine: Engine, dataset: RawDataset, split: str = "test", *, batch_size: int = 64,
                    workers: int = 2, progress: bool | None = None) -> Evaluation:
    """Run ``engine`` over one split of ``dataset``; unreadable files are listed, not counted."""
    data = dataset.split(split)
    if data is None:
        raise UserError(f"{dataset.root} has no {split} split (it has: {', '.join(dataset.splits)})")
    show = progress if progress is not None else sys.stderr.isatty()
    probs, kept, failed = split_probabilities(engine, data, batch_size=batch_size, workers=workers, progress=show,
                                              desc=f"evaluating {split}")
    errors = []
    for i, err in failed:
        f = data.files[i] if data.files is not None else Path(str(i))
        try:
            name = str(f.relative_to(dataset.root))
        except ValueError:
            name = str(f)
        errors.append((name, err))
    labels = np.asarray(data.labels, dtype=np.int64)[kept]
    return compute_metrics(split, dataset.classes, engine.labels, labels, probs, errors)


def write_evaluation(ev: Evaluation, out_dir: str | Path, *, title: str = "") -> dict[str, Path]:
    """``metrics.json`` and ``confusion_matrix.png`` in ``out_dir``."""
    import json

    from imgclf.train.report import plot_confusion_matrix

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.json"
    metrics.write_text(json.dumps(ev.to_dict(), indent=2) + "\n", encoding="utf-8")
    png = plot_confusion_matrix(ev.confusion, ev.labels, out / "confusion_matrix.png",
                                title=title or f"Confusion matrix, {ev.split} split (row-normalised)")
    return {"metrics": metrics, "confusion_matrix": png}


def format_evaluation(ev: Evaluation) -> str:
    """Plain-text summary for the terminal."""
    lines = [f"{ev.split}: {ev.n:,} images, accuracy {ev.accuracy:.2%}"
             + (f", top-5 {ev.top5:.2%}" if ev.top5 is not None else "") + f", loss {ev.loss:.4f}"]
    width = max(8, max((len(c.label) for c in ev.per_class), default=8))
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support")

    def pct(v: float | None) -> str:
        return "    n/a" if v is None else f"{v:7.2%}"

    for c in ev.per_class:
        lines.append(f"  {c.label:<{width}}  {pct(c.precision):>9}  {pct(c.recall):>6}  {pct(c.f1):>5}  {c.support:>7}")
    if ev.errors:
        lines.append(f"  {len(ev.errors)} unreadable file(s) skipped, e.g. {ev.errors[0][0]}: {ev.errors[0][1]}")
    return "\n".join(lines)
