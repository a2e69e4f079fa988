"""What a fine-tuning run leaves beside its package: the combined history and learning curves,
confusion matrices, the worst-classified validation images, ``metrics.json``, ``finetune.json`` and
``report.md``. Called by the publish step once the package is written."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.data import RawDataset
from imgclf.evaluation import (
    Evaluation,
    evaluation_markdown,
    plot_confusion_matrix,
    plot_learning_curves,
    save_worst_grid,
    write_history,
)
from imgclf.finetune.options import FinetuneOptions
from imgclf.finetune.state import RunState, StageState
from imgclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from imgclf.publish import Published


@dataclass(frozen=True)
class RunRecord:
    """The facts of a finished run that its report states."""

    name: str
    base: str  # the zoo model fine-tuned
    dataset: RawDataset  # decoded, split as trained
    spec: PreprocessSpec
    options: FinetuneOptions  # as run (finetune.json keeps them)
    state: RunState  # per stage epochs, best accuracy, history
    kept: str  # "head" or "all": the stage whose weights were published


def combined_history(state: RunState) -> list[dict[str, Any]]:
    """Both stages' epochs on one axis, stage 2 continuing where stage 1 ended."""
    rows: list[dict[str, Any]] = []
    offset = 0.0
    for stage in ("head", "all"):
        info = state.get("stages", {}).get(stage)
        if not info:
            continue
        for row in info.get("history", []):
            r = dict(row)
            r["stage"] = stage
            r["epoch"] = int(offset) + int(row["epoch"])
            r["epoch_float"] = round(offset + float(row.get("epoch_float", row["epoch"])), 4)
            rows.append(r)
        if rows:
            offset = rows[-1]["epoch_float"]
    return rows


def stage_summaries(state: RunState) -> dict[str, StageState]:
    """Per stage what the run state holds, without the per-epoch history."""
    summaries: dict[str, StageState] = {}
    for key, stage in state.get("stages", {}).items():
        summary = stage.copy()
        summary.pop("history", None)
        summaries[key] = summary
    return summaries


def write_run_files(out: Path, published: Published, record: RunRecord) -> None:
    """Every file of the run's record in ``out`` (the package directory)."""
    name = record.name
    ev_val, ev_test = published.evaluations["val"], published.evaluations.get("test")
    history = combined_history(record.state)
    write_history(history, out, eval_split="val", meta={"kept_stage": record.kept})
    if history:
        plot_learning_curves(history, out / "learning_curves.png",
                             title=f"{name}: head only, then all layers ({record.base})")
    plot_confusion_matrix(ev_val.confusion, ev_val.labels, out / "confusion_matrix.png",
                          title=f"{name}: validation split (row-normalised)")
    if ev_test is not None:
        plot_confusion_matrix(ev_test.confusion, ev_test.labels, out / "confusion_matrix_test.png",
                              title=f"{name}: test split (row-normalised)")
    val, val_split = published.outputs["val"], record.dataset.splits["val"]
    files = val_split.files or []
    drawn = save_worst_grid(out / "worst_val.png", [files[i] for i in val.kept], val.probs, val.targets(val_split),
                            record.dataset.classes, record.spec)
    summary = dict(published.package.meta.provenance.metrics)
    full = {"val": ev_val.to_dict(), "test": ev_test.to_dict() if ev_test else None, "summary": summary,
            "stages": stage_summaries(record.state), "kept_stage": record.kept}
    (out / "metrics.json").write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    (out / "finetune.json").write_text(json.dumps({"options": asdict(record.options), "state": record.state},
                                                  indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(record, ev_val, ev_test, drawn, bool(history)), encoding="utf-8")


def report_markdown(record: RunRecord, ev_val: Evaluation, ev_test: Evaluation | None, drawn: int,
                    has_history: bool) -> str:
    """``report.md``: the run's settings, each stage, and the figures measured on the package."""
    ds, spec = record.dataset, record.spec
    n = {k: len(v) for k, v in ds.splits.items()}
    lines = [f"# Fine-tuning: {record.name}", "",
             f"- base model: `{record.base}`, input {spec.channels}x{spec.input_size}x{spec.input_size}, "
             f"augmentation `{record.options.augment}`",
             "- test-time augmentation: "
             + ("mirror (the package averages each image and its mirror image)" if record.options.tta else "none"),
             f"- dataset: {ds.root} ({len(ds.classes)} classes: {', '.join(ds.classes)}); "
             f"{n['train']} train, {n['val']} val" + (f", {n['test']} test" if "test" in n else "")
             + f" images; validation = {ds.val_from or ''}"]
    if ds.skipped:
        lines.append(f"- unreadable files skipped: {len(ds.skipped)}")
    stages = stage_summaries(record.state)
    for key, label in (("head", "stage 1, head on frozen features"), ("all", "stage 2, all layers")):
        s = stages.get(key)
        if s:
            best = "n/a" if s["best_val_acc"] is None else f"{s['best_val_acc']:.2%}"
            features = ""
            if "feature_cache" in s:
                how = "loaded from the cache" if s["feature_cache"] == "hit" else "computed"
                features = f" (backbone features {how} in {s['feature_seconds']:.0f} s)"
            lines.append(f"- {label}: {s['epochs']} epochs ({s['stopped']}), best val accuracy {best}, "
                         f"{s['seconds']:.0f} s{features}")
    lines += [f"- exported: the best checkpoint of {'stage 2' if record.kept == 'all' else 'stage 1'}", "",
              "Figures below are measured on the exported package (`model.onnx`) through the same decode and "
              "preprocessing as `imgclf serve`.", "", "## Validation", "", evaluation_markdown(ev_val.to_dict())]
    if ev_test is not None:
        lines += ["", "## Test", "", evaluation_markdown(ev_test.to_dict()), "",
                  "![test confusion matrix](confusion_matrix_test.png)"]
    if has_history:
        lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
    lines += ["", "## Confusion matrix (validation)", "", "![confusion matrix](confusion_matrix.png)", "",
              "## Worst-classified validation images", "",
              f"{drawn} misclassified image(s), lowest probability on the true class first." if drawn else
              "No validation image was misclassified.", "", "![worst-classified](worst_val.png)", ""]
    return "\n".join(lines)
