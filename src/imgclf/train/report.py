"""Run records: history CSV/JSON, learning-curve and confusion-matrix PNGs, ``report.md``.

Plots use matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HISTORY_COLUMNS = ["epoch", "epoch_float", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                   "time", "elapsed", "img_per_s", "partial"]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_history(history: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *,
                  eval_split: str = "val", meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``history.csv`` (one row per epoch) and ``history.json`` (the same plus run facts)."""
    out = Path(out_dir)
    extra = sorted({k for row in history for k in row} - set(HISTORY_COLUMNS))
    columns = HISTORY_COLUMNS + extra
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    csv_path, json_path = out / "history.csv", out / "history.json"
    _atomic_write(csv_path, "".join(lines))
    _atomic_write(json_path, json.dumps({"eval_split": eval_split, **(meta or {}), "epochs": list(history)},
                                        indent=2) + "\n")
    return csv_path, json_path


def read_history(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _figure(rows: int, cols: int, size: tuple[float, float]):  # noqa: ANN202 - matplotlib Figure
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_learning_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                         title: str = "", eval_split: str = "val") -> Path:
    """Loss (top) and accuracy (bottom) per epoch, train vs the evaluation split."""
    fig, axes = _figure(2, 1, (7, 7))
    x = [row.get("epoch_float", row["epoch"]) for row in history]
    for ax, key, label in ((axes[0][0], "loss", "Cross-entropy loss"), (axes[1][0], "acc", "Accuracy")):
        ax.plot(x, [row.get(f"train_{key}") for row in history], color="tab:blue", label="train")
        if any(row.get(f"val_{key}") is not None for row in history):
            ax.plot(x, [row.get(f"val_{key}", np.nan) for row in history], color="tab:orange", label=eval_split)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    return p


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | os.PathLike[str], *,
                          title: str = "") -> Path:
    """Row-normalised confusion matrix (true class per row) with the counts written in."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(labels)
    side = max(5.0, 0.45 * k + 2)
    fig, axes = _figure(1, 1, (side + 1, side))
    ax = axes[0][0]
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
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "Confusion matrix (row-normalised)")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    return p


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def evaluation_markdown(ev: dict[str, Any]) -> str:
    """Figures of an evaluation (``Evaluation.to_dict()``) as markdown."""
    lines = [f"- examples: {ev['n']:,}", f"- accuracy: **{_pct(ev['accuracy'])}**"]
    if ev.get("top5") is not None:
        lines.append(f"- top-5 accuracy: {_pct(ev['top5'])}")
    lines.append(f"- mean cross-entropy: {ev['loss']:.4f}")
    if ev.get("errors"):
        lines.append(f"- unreadable files (not counted): {len(ev['errors'])}")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for c in ev["per_class"]:
        lines.append(f"| {c['label']} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | {c['support']} |")
    return "\n".join(lines)


def write_run_report(out_dir: str | os.PathLike[str], *, title: str, facts: dict[str, Any],
                     evaluation: dict[str, Any] | None, history: Sequence[dict[str, Any]],
                     eval_split: str = "val", notes: Sequence[str] = ()) -> Path:
    """``report.md``: what was trained, the final figures, the curves and the confusion matrix."""
    out = Path(out_dir)
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in facts.items() if v is not None]
    lines += [f"- note: {n}" for n in notes]
    if evaluation is not None:
        lines += ["", f"## Test results ({evaluation.get('split', 'test')} split, served model)", "",
                  "Measured on the exported package through the same decode and preprocessing as "
                  "`imgclf serve`.", "", evaluation_markdown(evaluation)]
    if history:
        last = history[-1]
        best_val = max((r["val_acc"] for r in history if r.get("val_acc") is not None), default=None)
        lines += ["", "## Training", "",
                  f"- epochs: {last.get('epoch_float', last['epoch'])}, steps: {last['step']}, "
                  f"time: {last['elapsed']:.0f} s",
                  f"- final train loss {last['train_loss']:.4f}, accuracy {_pct(last['train_acc'])} (augmented batches)"]
        if last.get("val_acc") is not None:
            lines.append(f"- final {eval_split} loss {last['val_loss']:.4f}, accuracy {_pct(last['val_acc'])}; "
                         f"best {eval_split} accuracy {_pct(best_val)}")
        lines += ["", "![learning curves](learning_curves.png)"]
    if evaluation is not None and (out / "confusion_matrix.png").is_file():
        lines += ["", "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "Files: `history.csv`, `history.json`, `metrics.json`, `checkpoints/`, `package/`.", ""]
    path = out / "report.md"
    _atomic_write(path, "\n".join(lines))
    return path


def plot_ladder(steps: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Evaluation-split accuracy per epoch of every ladder step on one plot."""
    fig, axes = _figure(1, 1, (8, 5))
    ax = axes[0][0]
    for s in steps:
        hist = s.get("history") or []
        if hist and any(r.get("val_acc") is not None for r in hist):
            ax.plot([r.get("epoch_float", r["epoch"]) for r in hist], [r.get("val_acc") for r in hist],
                    label=s["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("Seed ladder: accuracy on the evaluation split per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p = Path(path)
    fig.savefig(p)
    return p


def write_ladder_report(out_dir: str | os.PathLike[str], steps: Sequence[dict[str, Any]], *,
                        dataset: str) -> Path:
    """The ladder table (test accuracy per step) with each step's learning curves."""
    out = Path(out_dir)
    lines = ["# Seed ladder", "", f"Dataset: {dataset}", "",
             "| step | recipe | adds | epochs | train acc | best eval acc | test acc (served) | time |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for s in steps:
        lines.append(
            f"| {s['label']} | `{s['recipe']}` | {s['adds']} | {s.get('epochs', 'n/a')} | {_pct(s.get('train_acc'))} | "
            f"{_pct(s.get('best_eval_acc'))} | **{_pct(s.get('test_acc'))}** | "
            + (f"{s['time']:.0f} s |" if s.get("time") is not None else "n/a |"))
    lines += ["", "Train accuracy is measured on augmented batches during the last epoch; the evaluation "
              "split is the one watched during training; test accuracy is measured on the exported package.",
              "", "![all steps](ladder_curves.png)", ""]
    for s in steps:
        if s.get("curves"):
            lines += [f"## {s['label']} (`{s['recipe']}`)", "", f"![{s['label']}]({s['curves']})", ""]
    path = out / "report.md"
    _atomic_write(path, "\n".join(lines))
    return path
