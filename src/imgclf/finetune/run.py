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
checkpoint, and the better of the two is exported. The package directory ``--out`` then also
holds the metrics, learning curves, confusion matrices, a grid of the worst-classified validation
images and ``report.md``.
Training state lives in ``OUT/training/`` (:mod:`imgclf.finetune.state`) until the package is
written, so ``--resume`` can continue an interrupted run (the same rules as ``imgclf train
--resume``: :mod:`imgclf.train.resume_options`). The package is written by the one publish step
(:mod:`imgclf.publish`); :mod:`imgclf.finetune.report` writes the run's record beside it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.finetune.options import FinetuneOptions
from imgclf.finetune.stages import StageOutcome
from imgclf.package import DatasetRecord, Provenance, package_name

if TYPE_CHECKING:
    from imgclf.finetune.backbone import Split
    from imgclf.finetune.dataset import FolderData
    from imgclf.finetune.state import RunState
    from imgclf.package import ModelPackage
    from imgclf.preprocess import PreprocessSpec
    from imgclf.zoo.registry import ZooEntry

__all__ = ["FinetuneOptions", "FinetuneResult", "StageOutcome", "finetune"]


@dataclass
class FinetuneResult:
    out: Path
    stopped: str  # completed | interrupted
    package: Path | None = None
    feature_cache: Path | None = None
    feature_cache_hit: bool | None = None
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    kept: str | None = None  # the stage whose weights were exported
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    elapsed: float = 0.0




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
    from imgclf.finetune.lineage import check_labels, open_parent
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
    name = package_name(opts.name or Path(opts.out).resolve().name, default="finetuned")
    configure_cpu(opts.threads)
    torch.manual_seed(opts.seed)
    cache_root = Path(opts.cache_dir) if opts.cache_dir else None
    run_dir, state = open_run(opts)

    parent = open_parent(opts.parent) if opts.parent else None
    data = load_folder(opts.data, spec, val_fraction=opts.val_fraction, seed=opts.seed,
                       cache_dir=cache_root / "datasets" if cache_root else None, workers=opts.workers,
                       progress=opts.progress is not False, use_cache=opts.use_cache, add_data=opts.add_data)
    if parent is not None:
        check_labels(parent[0], data.classes)
    log(data.summary())
    for extra in data.extras:
        what = f"{len(extra.feedback_ids)} feedback records" if extra.manifest_sha256 else "extra images"
        log(f"added to training: {extra.images} images from {extra.path} ({what})")
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
            files = (data.train.files or []) + (data.val.files or [])  # a folder's sets always carry them
            t0 = time.perf_counter()
            backbone = split.backbone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # (torch stubs lack it)
            fs = cached_features(backbone, torch.cat([data.train.images, data.val.images]), files, spec,
                                 architecture=entry.name,
                                 cache_dir=cache_root / "features" if cache_root else None,
                                 progress=opts.progress, use_cache=opts.use_cache)
            backbone.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
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
            stages["head"] = {**result.stages["head"].brief(),
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
            stages["all"] = result.stages["all"].brief()
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
    _export(result, split, data, spec, opts, state, name, entry, t_start, log, parent)
    return result



def _provenance(split: Split, data: FolderData, spec: PreprocessSpec, opts: FinetuneOptions, state: RunState,
                kept: str, entry: ZooEntry, parent: tuple[ModelPackage, str] | None = None) -> Provenance:
    """The package's record of this run (the metrics measured on the package are added by publish)."""
    from imgclf.finetune.lineage import lineage_record
    from imgclf.finetune.report import stage_summaries

    stages = stage_summaries(state)
    training = {
        "freeze_epochs": opts.freeze_epochs, "epochs": opts.epochs, "augment": opts.augment,
        "image_size": spec.input_size, "lr": opts.lr, "finetune_lr": opts.stage2_lr, "lr_decay": opts.lr_decay,
        "layer_groups": len(split.groups), "batch_size": opts.batch_size, "seed": opts.seed,
        "label_smoothing": opts.label_smoothing, "kept_stage": kept, "test_time_augmentation": opts.tta,
        "stages": stages,
    }
    counts = data.counts()
    root = data.root.resolve()
    return Provenance(
        architecture=f"{entry.name} (fine-tuned)", task="finetune", family=entry.family, parent=entry.name,
        num_params=sum(p.numel() for p in split.net.parameters()),
        weights=opts.weights or (entry.weights.filename if entry.weights else None),
        dataset=DatasetRecord(name=root.name, path=str(root), format="folder", classes=tuple(data.classes),
                              splits={k: int(sum(v)) for k, v in counts.items()}, val_from=data.val_from,
                              skipped_files=len(data.skipped)),
        metrics={"training_seconds": round(sum(s.get("seconds", 0.0) for s in stages.values()), 1)},
        training=training,
        extra=lineage_record(parent, data.extras),
    )


def _export(result: FinetuneResult, split: Split, data: FolderData, spec: PreprocessSpec, opts: FinetuneOptions,
            state: RunState, name: str, entry: ZooEntry, t_start: float, log: Callable[[str], None],
            parent: tuple[ModelPackage, str] | None = None) -> None:
    """Publish the kept model at ``--out`` (evaluated on val and test through the serving path),
    with the run's record beside it."""
    import torch

    from imgclf.finetune.report import RunRecord, write_run_files
    from imgclf.publish import Published, publish

    out = result.out
    kept = result.kept or "all"
    net: torch.nn.Module = split.net.to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    net = net.float().eval()
    provenance = _provenance(split, data, spec, opts, state, kept, entry, parent)
    if opts.tta:
        from imgclf.train.models import TTA

        net = TTA(net, 1).eval()  # mirror averaging, inside the exported graph
    record = RunRecord(name=name, base=entry.name, dataset=data.raw, spec=spec, options=opts, state=state, kept=kept)

    def report(published: Published) -> None:
        write_run_files(out, published, record)

    splits = ["val"] + (["test"] if data.test is not None else [])
    published = publish(net, out, name=name, labels=list(data.classes), spec=spec, provenance=provenance,
                        version=opts.version,
                        check_image=data.val.images[0].permute(1, 2, 0).numpy(), dataset=data.raw,
                        eval_splits=splits, report=report)
    result.package = published.package.path
    result.metrics = dict(published.package.meta.provenance.metrics)
    result.elapsed = time.perf_counter() - t_start
    ev_val, ev_test = published.evaluations["val"], published.evaluations.get("test")
    log(f"validation accuracy {ev_val.accuracy:.2%} ({ev_val.n} images)"
        + (f", test accuracy {ev_test.accuracy:.2%} ({ev_test.n} images)" if ev_test else "")
        + f", measured on the exported package; kept the {'all-layers' if kept == 'all' else 'head-only'} model")
    log(f"wrote {out} ({name}: {len(data.classes)} classes); serve it with: imgclf serve --model {out}")
