"""Classification metrics from class probabilities: accuracy, top-5, cross-entropy, confusion
matrix and per-class precision / recall / F1."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.errors import UserError

Probabilities = npt.NDArray[np.float32]


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
    confusion: npt.NDArray[np.int64]  # (K, K) or (K, K + 1): true class per row, last column "other"
    per_class: list[ClassMetrics]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, why it was not counted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split, "n": self.n, "accuracy": self.accuracy, "top5": self.top5, "loss": self.loss,
            "labels": self.labels, "confusion": self.confusion.astype(int).tolist(),
            "per_class": [asdict(c) for c in self.per_class], "errors": [list(e) for e in self.errors],
        }


def label_map(classes: list[str], model_labels: list[str]) -> npt.NDArray[np.int64]:
    """Model output index of each dataset class; every class must be one of the model's labels."""
    index = {name: i for i, name in enumerate(model_labels)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise UserError(f"the model has no label for dataset class(es) {', '.join(missing[:5])}; "
                        f"its labels start {', '.join(model_labels[:5])}")
    return np.asarray([index[c] for c in classes], dtype=np.int64)


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def compute_metrics(split: str, classes: list[str], model_labels: list[str], y_true: npt.NDArray[np.int64],
                    probs: Probabilities, errors: list[tuple[str, str]] | None = None) -> Evaluation:
    """Metrics of ``probs`` (rows in model-label order) against dataset class indices ``y_true``.

    A prediction of a model label that is not a dataset class counts as wrong and lands in an extra
    "other" column of the confusion matrix.
    """
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
        per_class.append(ClassMetrics(classes[c], precision, recall, _f1(precision, recall), support))
    accuracy = float(np.trace(confusion[:, :k]) / n) if n else float("nan")
    return Evaluation(split, list(classes), n, accuracy, top5, loss, confusion, per_class, list(errors or []))


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
