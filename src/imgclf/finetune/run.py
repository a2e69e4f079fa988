"""``imgclf finetune``: a pretrained zoo backbone on the user's folder, out comes a model package.

1. The folder is checked, split and decoded (:mod:`imgclf.finetune.dataset`) into the trainer's
   :class:`~imgclf.train.data.ImageSet` splits; options are :mod:`imgclf.finetune.options`.
2. Stage 1, the head alone: the backbone is frozen in inference mode, its features are computed
   once and cached (:mod:`imgclf.finetune.features`), and a new linear head trains on them.
3. Stage 2, the whole network: unfrozen, with layer-wise learning rates (the input-side groups
   slower) and the augmentation preset on top of the base model's preprocessing. Batch-norm
   statistics stay frozen, as in stage 1.

Both stages (:mod:`imgclf.finetune.stages`) run through :class:`imgclf.train.loop.Trainer` (the
trainer of ``imgclf train``) with early stopping on validation accuracy; each keeps its best
checkpoint, and the better of the two is exported. The package directory ``--out`` then also holds the metrics, learning curves,
confusion matrices, a grid of the worst-classified validation images and ``report.md``.
Training state lives in ``OUT/training/`` (:mod:`imgclf.finetune.state`) until the package is
written, so ``--resume`` can continue an interrupted run.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.finetune.options import FinetuneOptions
from imgclf.finetune.stages import StageOutcome

__all__ = ["FinetuneOptions", "FinetuneResult", "StageOutcome", "finetune", "package_name"]


@dataclass
class FinetuneResult:
    out: Path
    stopped: str  # completed | interrupted
    package: Path | None = None
    feature_cache: Path | None = None
    feature_cache_hit: bool | None = None
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    kept: str | None = None  # the stage whose weights were exported
    metrics: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0


def package_name(opts: FinetuneOptions) -> str:
    raw = opts.name or Path(opts.out).resolve().name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.") or "finetuned"
    return name[:64]


# ---------------------------------------------------------------------------------------------
# evaluation through the serving path
# ---------------------------------------------------------------------------------------------


def _evaluate(engine: Any, data: Any, split_name: str) -> tuple[Any, np.ndarray, list[int]]:
    """Metrics of one split measured on the exported package, its probabilities and their positions."""
    from imgclf.train.evaluate import compute_metrics, split_probabilities

    split = data.raw.split(split_name)
    probs, kept, failed = split_probabilities(engine, split)
    errors = [(str(split.files[i]), err) for i, err in failed]
    targets = np.asarray(split.labels, dtype=np.int64)[kept]
    ev = compute_metrics(split_name, data.classes, engine.labels, targets, probs, errors)
    return ev, probs, kept


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------


def finetune(opts: FinetuneOptions, log: Callable[[str], None] = print) -> FinetuneResult:
    """Run both stages and write the package; see the module docstring."""
    import torch

    from imgclf import zoo
    from imgclf.finetune.backbone import split_model
    from imgclf.finetune.dataset import load_folder
    from imgclf.finetune.features import cached_features
    from imgclf.finetune.stages import layerwise_groups, load_stage_weights, train_all, train_head
    from imgclf.finetune.state import open_run, save_state
    from imgclf.train.runtime import configure_cpu
    from imgclf.zoo.loading import preprocess_for

    opts.check()
    t_start = time.perf_counter()
    entry = zoo.get(opts.base)
    spec = preprocess_for(entry, opts.weights)
    if opts.image_size:
        spec = spec.with_size(opts.image_size)
    out = Path(opts.out)
    name = package_name(opts)
    configure_cpu(opts.threads)
    torch.manual_seed(opts.seed)
    cache_root = Path(opts.cache_dir) if opts.cache_dir else None
    run_dir, state = open_run(opts)

    data = load_folder(opts.data, spec, val_fraction=opts.val_fraction, seed=opts.seed,
                       cache_dir=cache_root / "datasets" if cache_root else None, workers=opts.workers,
                       progress=opts.progress is not False, use_cache=opts.use_cache)
    log(data.summary())
    for w in data.warnings:
        print(f"imgclf: warning: {w}", file=sys.stderr)
    model = zoo.build(opts.base, weights=opts.weights, allow_download=opts.allow_download)
    split = split_model(model, entry, len(data.classes), input_size=spec.input_size, channels=spec.channels,
                        n_groups=opts.groups, seed=opts.seed)
    save_state(run_dir, state)  # from here on an interrupted run can be resumed
    log(f"base {entry.name}: {split.feature_dim}-d features from '{split.classifier}' inputs, "
        f"{len(split.groups)} layer groups; input {spec.channels}x{spec.input_size}x{spec.input_size}, "
        f"augmentation '{opts.augment}'")
    result = FinetuneResult(out, "completed")
    stages = state["stages"]

    # -- stage 1: the head on cached features ---------------------------------------------
    if opts.freeze_epochs > 0:
        if stages.get("head", {}).get("done"):
            load_stage_weights(split.head, run_dir / "stage1")
            log("stage 1 (head) already done; continuing with stage 2")
        else:
            files = data.train.files + data.val.files
            t0 = time.perf_counter()
            backbone = split.backbone.to(memory_format=torch.channels_last)
            fs = cached_features(backbone, torch.cat([data.train.images, data.val.images]), files, spec,
                                 architecture=entry.name,
                                 cache_dir=cache_root / "features" if cache_root else None,
                                 progress=opts.progress, use_cache=opts.use_cache)
            backbone.to(memory_format=torch.contiguous_format)
            feature_seconds = round(time.perf_counter() - t0, 1)
            result.feature_cache, result.feature_cache_hit = fs.path, fs.hit
            how = "loaded from the cache" if fs.hit else f"computed in {feature_seconds:.1f}s"
            log(f"feature cache {'hit' if fs.hit else 'miss'}: {len(files)} images x {fs.features.shape[1]} "
                f"features {how} ({fs.path})")
            log(f"stage 1: training the head on frozen features for up to {opts.freeze_epochs} epochs")
            r1 = train_head(split, data, fs.features, opts, run_dir)
            result.stages["head"] = StageOutcome.of(r1)
            if r1.stopped == "interrupted":
                result.stopped = "interrupted"
                return result
            stages["head"] = {"done": True, **result.stages["head"].brief(),
                              "feature_cache": "hit" if fs.hit else "miss",
                              "feature_seconds": feature_seconds}
            save_state(run_dir, state)

    # -- stage 2: everything, layer-wise rates --------------------------------------------
    head_best = stages.get("head", {}).get("best_val_acc")
    if opts.epochs > 0:
        if stages.get("all", {}).get("done"):
            load_stage_weights(split.net, run_dir / "stage2")
        else:
            rates = ", ".join(f"{g['lr_scale'] * opts.stage2_lr:.2g}" for g in layerwise_groups(split, opts.lr_decay))
            log(f"stage 2: fine-tuning all layers for up to {opts.epochs} epochs (learning rates input -> head: {rates})")
            r2 = train_all(split, data, spec, opts, run_dir)
            result.stages["all"] = StageOutcome.of(r2)
            if r2.stopped == "interrupted":
                result.stopped = "interrupted"
                return result
            stages["all"] = {"done": True, **result.stages["all"].brief()}
            save_state(run_dir, state)
    all_best = stages.get("all", {}).get("best_val_acc")
    kept = "all" if all_best is not None and (head_best is None or all_best >= head_best) else "head"
    if kept == "head" and opts.epochs > 0:
        # Stage 2 never beat the head alone: export the pretrained backbone with the stage-1 head.
        log(f"stage 2's best validation accuracy ({all_best:.2%}) is below stage 1's ({head_best:.2%}); "
            "exporting the stage-1 model")
        model = zoo.build(opts.base, weights=opts.weights, allow_download=opts.allow_download)
        split = split_model(model, entry, len(data.classes), input_size=spec.input_size, channels=spec.channels,
                            n_groups=opts.groups, seed=opts.seed)
        load_stage_weights(split.head, run_dir / "stage1")
    result.kept = kept
    state["kept"] = kept
    _export(result, split, data, spec, opts, state, name, entry, t_start, log)
    return result


def _combined_history(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Both stages' epochs on one axis, stage 2 continuing where stage 1 ended."""
    rows: list[dict[str, Any]] = []
    offset = 0.0
    for stage in ("head", "all"):
        info = state["stages"].get(stage)
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


def _export(result: FinetuneResult, split: Any, data: Any, spec: Any, opts: FinetuneOptions,
            state: dict[str, Any], name: str, entry: Any, t_start: float, log: Callable[[str], None]) -> None:
    import torch

    from imgclf.engine import OnnxEngine
    from imgclf.export import export_package
    from imgclf.finetune.worst import save_worst_grid
    from imgclf.package import update_provenance
    from imgclf.train.report import plot_confusion_matrix, plot_learning_curves, write_history

    out = result.out
    net = split.net.to("cpu", memory_format=torch.contiguous_format).float().eval()
    stages = state["stages"]
    provenance: dict[str, Any] = {
        "architecture": f"{entry.name} (fine-tuned)",
        "base_model": entry.name,
        "family": entry.family,
        "weights": opts.weights or (entry.weights.filename if entry.weights else None),
        "num_params": sum(p.numel() for p in net.parameters()),
        "dataset": {"path": str(data.root.resolve()), "classes": list(data.classes), "counts": data.counts(),
                    "val_from": data.val_from, "skipped_files": len(data.skipped)},
        "finetune": {
            "freeze_epochs": opts.freeze_epochs, "epochs": opts.epochs, "augment": opts.augment,
            "image_size": spec.input_size, "lr": opts.lr, "finetune_lr": opts.stage2_lr, "lr_decay": opts.lr_decay,
            "layer_groups": len(split.groups), "batch_size": opts.batch_size, "seed": opts.seed,
            "label_smoothing": opts.label_smoothing, "kept_stage": result.kept, "test_time_augmentation": opts.tta,
            "stages": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in stages.items()},
        },
    }
    if opts.tta:
        from imgclf.train.models import TTA

        net = TTA(net, 1).eval()  # mirror averaging, inside the exported graph
    check = data.val.images[0].permute(1, 2, 0).numpy()
    report = export_package(net, out, name=name, labels=list(data.classes), spec=spec, provenance=provenance,
                            check_image=check)
    package = report.package
    result.package = package.path
    engine = OnnxEngine(package)
    ev_val, probs_val, kept_val = _evaluate(engine, data, "val")
    ev_test = _evaluate(engine, data, "test")[0] if data.test is not None else None
    metrics: dict[str, Any] = {"val_accuracy": ev_val.accuracy, "val_images": ev_val.n}
    if ev_test is not None:
        metrics.update(test_accuracy=ev_test.accuracy, test_images=ev_test.n)
    metrics["training_seconds"] = round(sum(s.get("seconds", 0.0) for s in stages.values()), 1)
    update_provenance(package.path, {"metrics": metrics})
    result.metrics = metrics

    # Extra files beside model.onnx + model.json: the run's record.
    history = _combined_history(state)
    write_history(history, out, eval_split="val", meta={"kept_stage": result.kept})
    if history:
        plot_learning_curves(history, out / "learning_curves.png",
                             title=f"{name}: head only, then all layers ({entry.name})")
    plot_confusion_matrix(ev_val.confusion, ev_val.labels, out / "confusion_matrix.png",
                          title=f"{name}: validation split (row-normalised)")
    if ev_test is not None:
        plot_confusion_matrix(ev_test.confusion, ev_test.labels, out / "confusion_matrix_test.png",
                              title=f"{name}: test split (row-normalised)")
    val_files = [data.val.files[i] for i in kept_val]
    drawn = save_worst_grid(out / "worst_val.png", val_files, probs_val, data.val.labels.numpy()[kept_val],
                            data.classes, spec)
    full = {"val": ev_val.to_dict(), "test": ev_test.to_dict() if ev_test else None, "summary": metrics,
            "stages": provenance["finetune"]["stages"], "kept_stage": result.kept}
    (out / "metrics.json").write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    (out / "finetune.json").write_text(json.dumps({"options": asdict(opts), "state": state}, indent=2, default=str)
                                       + "\n", encoding="utf-8")
    _write_report(out, name, entry.name, data, spec, opts, provenance, ev_val, ev_test, drawn, history)
    result.elapsed = time.perf_counter() - t_start
    log(f"validation accuracy {ev_val.accuracy:.2%} ({ev_val.n} images)"
        + (f", test accuracy {ev_test.accuracy:.2%} ({ev_test.n} images)" if ev_test else "")
        + f", measured on the exported package; kept the {'all-layers' if result.kept == 'all' else 'head-only'} model")
    log(f"wrote {out} ({name}: {len(data.classes)} classes); serve it with: imgclf serve --model {out}")


def _write_report(out: Path, name: str, base: str, data: Any, spec: Any, opts: FinetuneOptions,
                  provenance: dict[str, Any], ev_val: Any, ev_test: Any, drawn: int,
                  history: list[dict[str, Any]]) -> None:
    from imgclf.train.report import evaluation_markdown

    stages = provenance["finetune"]["stages"]
    lines = [f"# Fine-tuning: {name}", "",
             f"- base model: `{base}`, input {spec.channels}x{spec.input_size}x{spec.input_size}, "
             f"augmentation `{opts.augment}`",
             f"- test-time augmentation: {'mirror (the package averages each image and its mirror image)' if opts.tta else 'none'}",
             f"- dataset: {data.root} ({len(data.classes)} classes: {', '.join(data.classes)}); "
             f"{len(data.train)} train, {len(data.val)} val"
             + (f", {len(data.test)} test" if data.test is not None else "") + f" images; validation = {data.val_from}"]
    if data.skipped:
        lines.append(f"- unreadable files skipped: {len(data.skipped)}")
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
    kept = provenance["finetune"]["kept_stage"]
    lines += [f"- exported: the best checkpoint of {'stage 2' if kept == 'all' else 'stage 1'}", "",
              "Figures below are measured on the exported package (`model.onnx`) through the same decode and "
              "preprocessing as `imgclf serve`.", "", "## Validation", "", evaluation_markdown(ev_val.to_dict())]
    if ev_test is not None:
        lines += ["", "## Test", "", evaluation_markdown(ev_test.to_dict()), "",
                  "![test confusion matrix](confusion_matrix_test.png)"]
    if history:
        lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
    lines += ["", "## Confusion matrix (validation)", "", "![confusion matrix](confusion_matrix.png)", "",
              "## Worst-classified validation images", "",
              f"{drawn} misclassified image(s), lowest probability on the true class first." if drawn else
              "No validation image was misclassified.", "", "![worst-classified](worst_val.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
