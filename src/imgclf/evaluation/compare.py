"""Two models on the same images, side by side: accuracy, per-class recall and where they disagree.

Both go through the serving path (:func:`imgclf.evaluation.evaluate.split_probabilities`) on the
same split of each dataset; predictions are compared by label name, so a version that added a
class is compared fairly with its parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgclf.data.dataset import RawDataset
from imgclf.engine import Engine
from imgclf.errors import UserError
from imgclf.evaluation.evaluate import evaluate_split, split_probabilities
from imgclf.evaluation.metrics import Evaluation

DISAGREEMENTS_SHOWN = 10


@dataclass
class Disagreement:
    item: str  # the file (or example index)
    label: str  # the true class
    a: str  # model A's top label
    b: str


@dataclass
class Comparison:
    """Models A and B on one split of one dataset."""

    dataset: str
    split: str
    a: Evaluation
    b: Evaluation
    disagreements: list[Disagreement] = field(default_factory=list)
    only_a_right: int = 0
    only_b_right: int = 0
    compared: int = 0  # images both models read

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "images": self.compared,
                "a": self.a.to_dict(), "b": self.b.to_dict(),
                "disagree": len(self.disagreements), "only_a_right": self.only_a_right,
                "only_b_right": self.only_b_right,
                "disagreements": [d.__dict__ for d in self.disagreements]}


def compare_split(a: Engine, b: Engine, dataset: RawDataset, split: str, *, batch_size: int = 64,
                  workers: int = 2) -> Comparison:
    data = dataset.split(split)
    if data is None:
        raise UserError(f"{dataset.root} has no {split} split (it has: {', '.join(dataset.splits)})")
    out_a = split_probabilities(a, data, batch_size=batch_size, workers=workers)
    out_b = split_probabilities(b, data, batch_size=batch_size, workers=workers)
    ev_a, ev_b = evaluate_split(a, dataset, split, out_a), evaluate_split(b, dataset, split, out_b)
    top_a = dict(zip(out_a.kept, (a.labels[int(i)] for i in out_a.probs.argmax(axis=1)), strict=True))
    top_b = dict(zip(out_b.kept, (b.labels[int(i)] for i in out_b.probs.argmax(axis=1)), strict=True))
    result = Comparison(dataset.name, split, ev_a, ev_b)
    labels = np.asarray(data.labels)
    for i in sorted(set(top_a) & set(top_b)):
        truth = dataset.classes[int(labels[i])]
        pa, pb = top_a[i], top_b[i]
        result.compared += 1
        result.only_a_right += int(pa == truth and pb != truth)
        result.only_b_right += int(pb == truth and pa != truth)
        if pa != pb:
            item = dataset.relative(data.files[i]) if data.files is not None else str(i)
            result.disagreements.append(Disagreement(item, truth, pa, pb))
    return result


def format_comparison(c: Comparison, name_a: str, name_b: str) -> str:
    """A side-by-side table: overall accuracy, top-5, recall per class, then the disagreements."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    width = max(12, *(len(x.label) + 9 for x in c.a.per_class))
    col = max(10, len(name_a), len(name_b))
    lines = [f"{c.dataset} ({c.split}, {c.compared} images)",
             f"  {'':<{width}} {name_a:>{col}} {name_b:>{col}}",
             f"  {'accuracy':<{width}} {pct(c.a.accuracy):>{col}} {pct(c.b.accuracy):>{col}}"]
    if c.a.top5 is not None or c.b.top5 is not None:  # models with more than five classes
        lines.append(f"  {'top-5':<{width}} {pct(c.a.top5):>{col}} {pct(c.b.top5):>{col}}")
    recall_b = {x.label: x.recall for x in c.b.per_class}
    for x in c.a.per_class:
        lines.append(f"  {'recall ' + x.label:<{width}} {pct(x.recall):>{col}} {pct(recall_b.get(x.label)):>{col}}")
    lines.append(f"  they disagree on {len(c.disagreements)} image(s): {name_b} alone right on {c.only_b_right}, "
                 f"{name_a} alone right on {c.only_a_right}")
    for d in c.disagreements[:DISAGREEMENTS_SHOWN]:
        lines.append(f"    {d.item}: true {d.label}, {name_a} says {d.a}, {name_b} says {d.b}")
    if len(c.disagreements) > DISAGREEMENTS_SHOWN:
        lines.append(f"    ... and {len(c.disagreements) - DISAGREEMENTS_SHOWN} more (all in the JSON)")
    return "\n".join(lines)
