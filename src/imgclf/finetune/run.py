"""``imgclf finetune``: a pretrained zoo backbone on the user's folder, out comes a model package.

1. The folder is checked, split and decoded (:mod:`imgclf.finetune.dataset`).
2. Stage 1, the head alone: the backbone is frozen in inference mode, its features are computed
   once and cached (:mod:`imgclf.finetune.features`), and a new linear head trains on them.
3. Stage 2, the whole network: unfrozen, with layer-wise learning rates (the input-side groups
   slower) and the augmentation preset on top of the base model's preprocessing. Batch-norm
   statistics stay frozen, as in stage 1.

Both stages run through :class:`imgclf.train.loop.Trainer` (the trainer of ``imgclf train``) with
early stopping on validation accuracy; each keeps its best checkpoint, and the better of the two
is exported. The package directory ``--out`` then also holds the metrics, learning curves,
confusion matrices, a grid of the worst-classified validation images and ``report.md``.
Training state lives in ``OUT/training/`` until the package is written, so ``--resume`` can
continue an interrupted run (the same rules as ``imgclf train --resume``:
:mod:`imgclf.train.resume_options`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgclf.errors import UserError
from imgclf.package import DatasetRecord, Provenance, package_name
from imgclf.train.resume_options import merge_on_resume, refuse_overwrite

RUN_DIR = "training"
STATE_FILE = "state.json"
# Options that define a run (kept in the run state); --resume reuses them.
DEFINING = ("data", "base", "weights", "epochs", "freeze_epochs", "image_size", "augment", "lr", "finetune_lr",
            "lr_decay", "groups", "batch_size", "val_fraction", "patience", "seed", "label_smoothing", "tta", "name")
# What the checkpoints depend on: --resume may not change these.
FIXED_ON_RESUME = ("data", "base", "weights", "image_size", "groups", "val_fraction", "seed")


@dataclass
class FinetuneOptions:
    data: str
    out: str
    base: str = "efficientnet_lite0"
    weights: str | None = None
    name: str | None = None
    epochs: int = 5  # stage 2: the whole network
    freeze_epochs: int = 10  # stage 1: the head on cached features (cheap)
    image_size: int | None = None  # default: the base model's
    augment: str = "default"
    lr: float = 1e-3  # stage 1 (AdamW)
    finetune_lr: float | None = None  # stage 2, head and last group; default lr / 4
    lr_decay: float = 0.5  # stage 2: each group toward the input trains at this times the next one's rate
    groups: int = 4
    batch_size: int = 32
    val_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    label_smoothing: float = 0.1
    tta: int = 0  # 1: the package averages the logits of the image and its mirror image
    cache_dir: str | None = None
    use_cache: bool = True
    allow_download: bool = True
    threads: int | None = None
    workers: int | None = None
    progress: bool | None = None
    resume: bool = False

    @property
    def stage2_lr(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else self.lr / 4

    def check(self) -> None:
        from imgclf.finetune.augment import PRESETS

        if self.epochs < 0 or self.freeze_epochs < 0:
            raise UserError("--epochs and --freeze-epochs must be 0 or more")
        if self.epochs == 0 and self.freeze_epochs == 0:
            raise UserError("nothing to train: --epochs and --freeze-epochs are both 0")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise UserError(f"--image-size must be between 16 and 1024, got {self.image_size}")
        if self.augment not in PRESETS:
            raise UserError(f"--augment must be one of {', '.join(PRESETS)}, got {self.augment!r}")
        if self.lr <= 0 or self.stage2_lr <= 0:
            raise UserError("learning rates must be positive")
        if not 0 < self.lr_decay <= 1:
            raise UserError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.tta not in (0, 1):
            raise UserError(f"--tta must be 0 or 1, got {self.tta}")
        if self.batch_size < 1 or self.groups < 1 or self.patience < 1:
            raise UserError("--batch-size, --groups and --patience must be at least 1")


@dataclass
class StageOutcome:
    epochs: float
    stopped: str
    best_val_acc: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


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


# ---------------------------------------------------------------------------------------------
# run state (what --resume needs)
# ---------------------------------------------------------------------------------------------


def _defining(opts: FinetuneOptions) -> dict[str, Any]:
    d = {k: getattr(opts, k) for k in DEFINING}
    d["data"] = str(Path(opts.data).expanduser().resolve())
    return d


def _open_run(opts: FinetuneOptions) -> tuple[Path, dict[str, Any]]:
    """Check ``--out`` and read the saved state of the run to resume; creates nothing."""
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the model package")
    run_dir = out / RUN_DIR
    if run_dir.exists() and not opts.resume:
        refuse_overwrite(run_dir, what="an unfinished fine-tuning run", out=out)
    state: dict[str, Any] = {"options": _defining(opts), "stages": {}}
    saved = saved_options(out) if opts.resume else None
    if saved is not None:
        merge_on_resume(saved, state["options"], fixed=FIXED_ON_RESUME, run_dir=run_dir)
        state = {**json.loads((run_dir / STATE_FILE).read_text(encoding="utf-8")), "options": state["options"]}
    return run_dir, state


def saved_options(out: str | Path) -> dict[str, Any] | None:
    """The options of the unfinished run in ``out``, or None when there is none."""
    state_path = Path(out) / RUN_DIR / STATE_FILE
    if not state_path.is_file():
        return None
    options = json.loads(state_path.read_text(encoding="utf-8")).get("options")
    return dict(options) if isinstance(options, dict) else None


def resolve_options(stated: dict[str, Any]) -> FinetuneOptions:
    """The options of a run from those stated (on the command line: the flags given). With
    ``resume``, the others come from the run in ``out`` (see :mod:`imgclf.train.resume_options`)."""
    merged = dict(stated)
    saved = saved_options(stated["out"]) if stated.get("resume") else None
    if saved is not None:
        given = {k: v for k, v in stated.items() if k in DEFINING}
        merged.update(merge_on_resume(saved, given, fixed=FIXED_ON_RESUME, run_dir=Path(stated["out"]) / RUN_DIR))
    if merged.get("data") is None:
        raise UserError("--data is required" + (f" (there is no unfinished run in {stated['out']} to resume)"
                                                if stated.get("resume") else ""))
    return FinetuneOptions(**merged)


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / STATE_FILE)


# ---------------------------------------------------------------------------------------------
# the two stages
# ---------------------------------------------------------------------------------------------


def _stage_outcome(result: Any) -> StageOutcome:
    best = result.best["value"] if result.best else None
    return StageOutcome(result.epochs, result.stopped, best, round(result.elapsed, 1), list(result.history))


def _load_best(module: Any, result: Any) -> None:
    from imgclf.train.loop import load_checkpoint

    if result.best_checkpoint is not None:
        module.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])


def train_head(split: Any, data: Any, features: Any, opts: FinetuneOptions, run_dir: Path) -> Any:
    """Stage 1: the new head on cached backbone features (the backbone itself is not touched)."""
    from imgclf.train.callbacks import EarlyStopping
    from imgclf.train.data import TensorBatches
    from imgclf.train.loop import TrainConfig, Trainer

    n_train = len(data.train)
    f_train, f_val = features[:n_train], features[n_train:]
    batch = min(max(opts.batch_size, 64), n_train)
    train = TensorBatches(f_train, data.train.labels, batch_size=batch, shuffle=True,
                          drop_last=n_train >= 2 * batch, seed=opts.seed)
    val = TensorBatches(f_val, data.val.labels, batch_size=1024)
    config = TrainConfig(epochs=float(opts.freeze_epochs), lr=opts.lr, optimizer="adamw", weight_decay=1e-4,
                         schedule="cosine", label_smoothing=opts.label_smoothing, precision="fp32",
                         seed=opts.seed, monitor="val_acc", progress=opts.progress)
    trainer = Trainer(split.head, train, val=val, config=config,
                      callbacks=[EarlyStopping("val_acc", patience=opts.patience)],
                      out_dir=run_dir / "stage1", meta={"stage": "head", "base": opts.base})
    result = trainer.fit(resume=opts.resume)
    if result.stopped != "interrupted":
        _load_best(split.head, result)
    return result


def layerwise_groups(split: Any, decay: float) -> list[dict[str, Any]]:
    """Param groups for stage 2: the head and the last backbone group at the full rate, each group
    nearer the input at ``decay`` times the rate of the one after it."""
    n = len(split.groups)
    groups = [{"params": params, "lr_scale": decay ** (n - 1 - i), "name": f"backbone{i}"}
              for i, params in enumerate(split.groups)]
    groups.append({"params": list(split.head.parameters()), "lr_scale": 1.0, "name": "head"})
    return groups


def train_all(split: Any, data: Any, spec: Any, opts: FinetuneOptions, run_dir: Path) -> Any:
    """Stage 2: every layer, layer-wise rates, augmentation on top of the base preprocessing."""
    from imgclf.finetune.augment import SpecTransform, get_preset
    from imgclf.train.callbacks import EarlyStopping
    from imgclf.train.data import TensorBatches
    from imgclf.train.loop import TrainConfig, Trainer

    net = split.net
    for p in net.parameters():
        p.requires_grad_(True)
    n_train = len(data.train)
    batch = min(opts.batch_size, n_train)
    train = TensorBatches(data.train.images, data.train.labels, batch_size=batch, shuffle=True,
                          drop_last=n_train >= 2 * batch, seed=opts.seed,
                          transform=SpecTransform(spec, get_preset(opts.augment)))
    val = TensorBatches(data.val.images, data.val.labels, batch_size=max(64, batch), transform=SpecTransform(spec))
    config = TrainConfig(epochs=float(opts.epochs), lr=opts.stage2_lr, optimizer="adamw", weight_decay=0.01,
                         schedule="cosine", warmup=0.1 if opts.epochs > 1 else 0.0, start_factor=0.1,
                         label_smoothing=opts.label_smoothing, seed=opts.seed, monitor="val_acc",
                         progress=opts.progress)
    trainer = Trainer(net, train, val=val, config=config, param_groups=layerwise_groups(split, opts.lr_decay),
                      callbacks=[EarlyStopping("val_acc", patience=opts.patience)],
                      out_dir=run_dir / "stage2", meta={"stage": "all", "base": opts.base})
    result = trainer.fit(resume=opts.resume)
    if result.stopped != "interrupted":
        _load_best(net, result)
    return result


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
    from imgclf.train.loop import configure_cpu
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
    run_dir, state = _open_run(opts)

    data = load_folder(opts.data, spec, val_fraction=opts.val_fraction, seed=opts.seed,
                       cache_dir=cache_root / "datasets" if cache_root else None, workers=opts.workers,
                       progress=opts.progress is not False, use_cache=opts.use_cache)
    log(data.summary())
    for w in data.warnings:
        print(f"imgclf: warning: {w}", file=sys.stderr)
    model = zoo.build(opts.base, weights=opts.weights, allow_download=opts.allow_download)
    split = split_model(model, entry, len(data.classes), input_size=spec.input_size, channels=spec.channels,
                        n_groups=opts.groups, seed=opts.seed)
    _save_state(run_dir, state)  # from here on an interrupted run can be resumed
    log(f"base {entry.name}: {split.feature_dim}-d features from '{split.classifier}' inputs, "
        f"{len(split.groups)} layer groups; input {spec.channels}x{spec.input_size}x{spec.input_size}, "
        f"augmentation '{opts.augment}'")
    result = FinetuneResult(out, "completed")
    stages = state["stages"]

    # -- stage 1: the head on cached features ---------------------------------------------
    if opts.freeze_epochs > 0:
        if stages.get("head", {}).get("done"):
            _load_stage_weights(split.head, run_dir / "stage1")
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
            result.stages["head"] = _stage_outcome(r1)
            if r1.stopped == "interrupted":
                result.stopped = "interrupted"
                return result
            stages["head"] = {"done": True, **_brief(result.stages["head"]),
                              "feature_cache": "hit" if fs.hit else "miss",
                              "feature_seconds": feature_seconds}
            _save_state(run_dir, state)

    # -- stage 2: everything, layer-wise rates --------------------------------------------
    head_best = stages.get("head", {}).get("best_val_acc")
    if opts.epochs > 0:
        if stages.get("all", {}).get("done"):
            _load_stage_weights(split.net, run_dir / "stage2")
        else:
            rates = ", ".join(f"{g['lr_scale'] * opts.stage2_lr:.2g}" for g in layerwise_groups(split, opts.lr_decay))
            log(f"stage 2: fine-tuning all layers for up to {opts.epochs} epochs (learning rates input -> head: {rates})")
            r2 = train_all(split, data, spec, opts, run_dir)
            result.stages["all"] = _stage_outcome(r2)
            if r2.stopped == "interrupted":
                result.stopped = "interrupted"
                return result
            stages["all"] = {"done": True, **_brief(result.stages["all"])}
            _save_state(run_dir, state)
    all_best = stages.get("all", {}).get("best_val_acc")
    kept = "all" if all_best is not None and (head_best is None or all_best >= head_best) else "head"
    if kept == "head" and opts.epochs > 0:
        # Stage 2 never beat the head alone: export the pretrained backbone with the stage-1 head.
        log(f"stage 2's best validation accuracy ({all_best:.2%}) is below stage 1's ({head_best:.2%}); "
            "exporting the stage-1 model")
        model = zoo.build(opts.base, weights=opts.weights, allow_download=opts.allow_download)
        split = split_model(model, entry, len(data.classes), input_size=spec.input_size, channels=spec.channels,
                            n_groups=opts.groups, seed=opts.seed)
        _load_stage_weights(split.head, run_dir / "stage1")
    result.kept = kept
    state["kept"] = kept
    _export(result, split, data, spec, opts, state, name, entry, t_start, log)
    return result


def _brief(s: StageOutcome) -> dict[str, Any]:
    return {"epochs": s.epochs, "stopped": s.stopped, "best_val_acc": s.best_val_acc, "seconds": s.seconds,
            "history": s.history}


def _load_stage_weights(module: Any, stage_dir: Path) -> None:
    from imgclf.train.loop import load_checkpoint

    ckpts = stage_dir / "checkpoints"
    for name in ("best.pt", "last.pt"):
        if (ckpts / name).is_file():
            module.load_state_dict(load_checkpoint(ckpts / name)["model"])
            return
    raise UserError(f"{stage_dir} has no checkpoint to resume from; start again without --resume")


def _export(result: FinetuneResult, split: Any, data: Any, spec: Any, opts: FinetuneOptions,
            state: dict[str, Any], name: str, entry: Any, t_start: float, log: Callable[[str], None]) -> None:
    """Publish the kept model at ``--out`` (evaluated on val and test through the serving path),
    with the run's record beside it."""
    import torch

    from imgclf.finetune.report import RunRecord, stage_summaries, write_run_files
    from imgclf.publish import Published, publish

    out = result.out
    net = split.net.to("cpu", memory_format=torch.contiguous_format).float().eval()
    stages = stage_summaries(state)
    training = {
        "freeze_epochs": opts.freeze_epochs, "epochs": opts.epochs, "augment": opts.augment,
        "image_size": spec.input_size, "lr": opts.lr, "finetune_lr": opts.stage2_lr, "lr_decay": opts.lr_decay,
        "layer_groups": len(split.groups), "batch_size": opts.batch_size, "seed": opts.seed,
        "label_smoothing": opts.label_smoothing, "kept_stage": result.kept, "test_time_augmentation": opts.tta,
        "stages": stages,
    }
    counts = data.counts()
    provenance = Provenance(
        architecture=f"{entry.name} (fine-tuned)", task="finetune", family=entry.family, parent=entry.name,
        num_params=sum(p.numel() for p in net.parameters()),
        weights=opts.weights or (entry.weights.filename if entry.weights else None),
        dataset=DatasetRecord(name=data.root.resolve().name, path=str(data.root.resolve()), format="folder",
                              classes=tuple(data.classes), splits={k: int(sum(v)) for k, v in counts.items()},
                              val_from=data.val_from, skipped_files=len(data.skipped)),
        metrics={"training_seconds": round(sum(s.get("seconds", 0.0) for s in stages.values()), 1)},
        training=training,
    )
    if opts.tta:
        from imgclf.train.models import TTA

        net = TTA(net, 1).eval()  # mirror averaging, inside the exported graph
    record = RunRecord(name=name, base=entry.name, dataset=data.raw, spec=spec, options=asdict(opts),
                       augment=opts.augment, tta=opts.tta, state=state, kept=result.kept or "all")

    def report(published: Published) -> None:
        write_run_files(out, published, record)

    splits = ["val"] + (["test"] if data.test is not None else [])
    published = publish(net, out, name=name, labels=list(data.classes), spec=spec, provenance=provenance,
                        check_image=data.val.images[0].permute(1, 2, 0).numpy(), dataset=data.raw,
                        eval_splits=splits, report=report)
    result.package = published.package.path
    result.metrics = dict(published.package.meta.provenance.metrics)
    result.elapsed = time.perf_counter() - t_start
    ev_val, ev_test = published.evaluations["val"], published.evaluations.get("test")
    log(f"validation accuracy {ev_val.accuracy:.2%} ({ev_val.n} images)"
        + (f", test accuracy {ev_test.accuracy:.2%} ({ev_test.n} images)" if ev_test else "")
        + f", measured on the exported package; kept the {'all-layers' if result.kept == 'all' else 'head-only'} model")
    log(f"wrote {out} ({name}: {len(data.classes)} classes); serve it with: imgclf serve --model {out}")
