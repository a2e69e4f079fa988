"""Written records of an evaluation or a run: ``metrics.json`` and ``report.md``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imgclf.atomic import atomic_write
from imgclf.evaluation.metrics import Evaluation
from imgclf.evaluation.plots import can_plot, plot_confusion_matrix


def write_evaluation(ev: Evaluation, out_dir: str | os.PathLike[str], *, title: str = "") -> dict[str, Path]:
    """``metrics.json`` and (with matplotlib installed) ``confusion_matrix.png`` in ``out_dir``;
    returns what was written by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.json"
    atomic_write(metrics, json.dumps(ev.to_dict(), indent=2) + "\n")
    written = {"metrics": metrics}
    if can_plot():
        written["confusion_matrix"] = plot_confusion_matrix(
            ev.confusion, ev.labels, out / "confusion_matrix.png",
            title=title or f"Confusion matrix, {ev.split} split (row-normalised)")
    else:
        print("imgclf: warning: matplotlib is not installed; no confusion_matrix.png", file=sys.stderr)
    return written


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def evaluation_markdown(ev: Mapping[str, Any]) -> str:
    """Figures of an evaluation (``Evaluation.to_dict()``) as markdown."""
    lines = [f"- examples: {ev['n']:,}", f"- accuracy: **{pct(ev['accuracy'])}**"]
    if ev.get("top5") is not None:
        lines.append(f"- top-5 accuracy: {pct(ev['top5'])}")
    lines.append(f"- mean cross-entropy: {ev['loss']:.4f}")
    if ev.get("errors"):
        lines.append(f"- unreadable files (not counted): {len(ev['errors'])}")
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for c in ev["per_class"]:
        lines.append(f"| {c['label']} | {pct(c['precision'])} | {pct(c['recall'])} | {pct(c['f1'])} | {c['support']} |")
    return "\n".join(lines)


def write_run_report(out_dir: str | os.PathLike[str], *, title: str, facts: Mapping[str, Any],
                     evaluation: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]],
                     eval_split: str = "val", notes: Sequence[str] = ()) -> Path:
    """``report.md`` of a training run: what was trained, the final figures, the curves and the
    confusion matrix."""
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
                  f"- final train loss {last['train_loss']:.4f}, accuracy {pct(last['train_acc'])} (augmented batches)"]
        if last.get("val_acc") is not None:
            lines.append(f"- final {eval_split} loss {last['val_loss']:.4f}, accuracy {pct(last['val_acc'])}; "
                         f"best {eval_split} accuracy {pct(best_val)}")
        lines += ["", "![learning curves](learning_curves.png)"]
    if evaluation is not None and (out / "confusion_matrix.png").is_file():
        lines += ["", "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)"]
    lines += ["", "Files: `history.csv`, `history.json`, `metrics.json`, `checkpoints/`, `package/`.", ""]
    path = out / "report.md"
    atomic_write(path, "\n".join(lines))
    return path


def write_ladder_report(out_dir: str | os.PathLike[str], steps: Sequence[Mapping[str, Any]], *,
                        dataset: str) -> Path:
    """The ladder table (test accuracy per step) with each step's learning curves."""
    out = Path(out_dir)
    lines = ["# Seed ladder", "", f"Dataset: {dataset}", "",
             "| step | recipe | adds | epochs | train acc | best eval acc | test acc (served) | time |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for s in steps:
        lines.append(
            f"| {s['label']} | `{s['recipe']}` | {s['adds']} | {s.get('epochs', 'n/a')} | {pct(s.get('train_acc'))} | "
            f"{pct(s.get('best_eval_acc'))} | **{pct(s.get('test_acc'))}** | "
            + (f"{s['time']:.0f} s |" if s.get("time") is not None else "n/a |"))
    lines += ["", "Train accuracy is measured on augmented batches during the last epoch; the evaluation "
              "split is the one watched during training; test accuracy is measured on the exported package.",
              "", "![all steps](ladder_curves.png)", ""]
    for s in steps:
        if s.get("curves"):
            lines += [f"## {s['label']} (`{s['recipe']}`)", "", f"![{s['label']}]({s['curves']})", ""]
    path = out / "report.md"
    atomic_write(path, "\n".join(lines))
    return path
