"""One training run from start to finished package: what ``imgclf train`` and ``imgclf experiment`` do.

data -> recipe -> :class:`~imgclf.train.loop.Trainer` -> model package (with labels, the exact
preprocessing used in training, provenance and test metrics) -> evaluation of the package through
the serving path -> ``report.md``. The run directory holds::

    run.json          the options and the resolved recipe (what ``--resume`` reuses)
    history.csv/json  per-epoch metrics        checkpoints/  last.pt, best.pt
    package/          model.onnx + model.json  metrics.json, learning_curves.png,
    report.md                                  confusion_matrix.png
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.errors import UserError
from imgclf.package import DatasetRecord, Provenance, package_name
from imgclf.train.resume_options import merge_on_resume, refuse_overwrite

if TYPE_CHECKING:
    from torch import nn

    from imgclf.publish import Published
    from imgclf.train.config import FitResult
    from imgclf.train.data import TrainingData
    from imgclf.train.recipes import Setup


@dataclass
class RunOptions:
    out: str
    data: str | None = None
    format: str = "auto"
    recipe: str | None = None  # None: the saved one on --resume, else "vgg"
    arch: str | None = None
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    val_fraction: float | None = None
    image_size: int | None = None
    grayscale: bool | None = None
    early_stopping: int | None = None
    time_budget: float | None = None
    precision: str | None = None
    channels_last: bool | None = None
    tta: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    threads: int | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    workers: int | None = None
    progress: bool | None = None
    resume: bool = False

    # Options that define the run (kept in run.json); the rest only affect how it runs.
    DEFINING = ("data", "format", "recipe", "arch", "epochs", "batch_size", "lr", "seed", "val_fraction",
                "image_size", "grayscale", "early_stopping", "tta", "overrides", "name", "precision",
                "channels_last", "time_budget")


@dataclass
class RunOutcome:
    out: Path
    stopped: str
    package: Path | None = None
    evaluation: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    is_main: bool = True


# What the checkpoints depend on: --resume may not change these (see imgclf.train.resume_options).
FIXED_ON_RESUME = ("data", "recipe", "arch", "image_size", "grayscale", "seed", "val_fraction")


def _unset(key: str, value: Any) -> bool:  # noqa: ANN401 - option values of any type
    return value is None or (key == "overrides" and not value) or (key == "format" and value == "auto")


def resolve_options(opts: RunOptions) -> RunOptions:
    """With ``--resume``, the run's saved options, replaced by those given now (see
    :mod:`imgclf.train.resume_options`); without it, refuse to overwrite a run."""
    out = Path(opts.out)
    saved_path = out / "run.json"
    has_ckpt = (out / "checkpoints" / "last.pt").is_file()
    if not opts.resume:
        if has_ckpt:
            refuse_overwrite(out / "checkpoints", what="a training run", out=out)
        return replace(opts, recipe=opts.recipe or "vgg")
    if not saved_path.is_file():
        if has_ckpt:
            raise UserError(f"{out} has a checkpoint but no run.json; cannot tell how it was started")
        return replace(opts, recipe=opts.recipe or "vgg")
    saved_all = json.loads(saved_path.read_text(encoding="utf-8"))["options"]
    saved = {k: saved_all[k] for k in RunOptions.DEFINING if not _unset(k, saved_all.get(k))}
    current = asdict(opts)
    given = {k: current[k] for k in RunOptions.DEFINING if not _unset(k, current[k])}
    if "overrides" in given:
        given["overrides"] = {**saved.get("overrides", {}), **given["overrides"]}
    merged = {**current, **merge_on_resume(saved, given, fixed=FIXED_ON_RESUME, run_dir=out)}
    if merged.get("recipe") is None:
        merged["recipe"] = "vgg"
    return RunOptions(**merged)


def recipe_for(opts: RunOptions) -> dict[str, Any]:
    from imgclf.train import recipes

    overrides = dict(opts.overrides)
    for path, value in (("opt.epochs", opts.epochs), ("opt.batch_size", opts.batch_size), ("opt.lr", opts.lr),
                        ("run.seed", opts.seed), ("data.val_fraction", opts.val_fraction),
                        ("run.early_stopping", opts.early_stopping), ("run.precision", opts.precision),
                        ("run.channels_last", opts.channels_last), ("eval.tta", opts.tta),
                        ("net.arch", opts.arch)):
        if value is not None:
            overrides[path] = value
    hyp = recipes.get_recipe(opts.recipe or "vgg", overrides)  # resolve_options has set it; "vgg" is its default
    if opts.arch is not None:
        family = "fast" if opts.arch == "fast" else "vgg" if opts.arch.startswith("vgg") else None
        if family is None:
            from imgclf.train.models import arch_names

            if opts.arch not in arch_names():
                raise UserError(f"unknown architecture {opts.arch!r}; known: {', '.join(arch_names())}")
        elif family != hyp["family"]:
            raise UserError(f"--arch {opts.arch} does not fit recipe {opts.recipe} (a {hyp['family']} recipe); "
                            f"use a {family} recipe")
    return hyp


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def train(opts: RunOptions) -> RunOutcome:
    """Run (or resume) one training run; see the module docstring for what lands in ``opts.out``."""
    import torch

    from imgclf.train.data import image_batches, load_training_data
    from imgclf.train.loop import Trainer
    from imgclf.train.recipes import build
    from imgclf.train.runtime import configure_cpu, init_distributed

    opts = resolve_options(opts)
    rank, world, _ = init_distributed()
    configure_cpu(opts.threads)
    hyp = recipe_for(opts)
    out = Path(opts.out)
    val_fraction = hyp["data"]["val_fraction"]
    if rank != 0:
        _barrier()  # rank 0 decodes (and caches) image folders first; the others then read the cache
    data = load_training_data(opts.data, opts.format, image_size=opts.image_size, grayscale=opts.grayscale,
                              val_fraction=val_fraction, seed=int(hyp["run"]["seed"]), cache_dir=opts.cache_dir,
                              workers=opts.workers, progress=opts.progress is not False and rank == 0,
                              use_cache=opts.use_cache)
    if rank == 0:
        _barrier()
        _report_skipped(data.raw.skipped)
    info = data.describe()
    setup = build(hyp, data, time_budget=opts.time_budget, progress=opts.progress)
    setup.config.probe_threads = opts.threads is None  # an explicit --threads is kept
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        saved = {k: v for k, v in asdict(opts).items() if k in RunOptions.DEFINING}
        record = {"options": saved, "recipe": hyp, "dataset": info, "environment": environment()}
        (out / "run.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"training {hyp['name']} ({setup.arch}, {_count(setup.model):,} parameters) on {info['name']}: "
              f"{info['train']:,} train / {info['val']:,} val / {info['test']:,} test images, "
              f"{len(data.classes)} classes, {data.spec.channels}x{data.spec.input_size}x{data.spec.input_size}"
              + (f", {world} processes" if world > 1 else ""), file=sys.stderr, flush=True)
    seed = int(hyp["run"]["seed"])
    train_batches = image_batches(data.train, data.spec, batch_size=setup.batch_size, train=True,
                                  augment=setup.augment, seed=seed)
    eval_set = data.eval_set
    eval_batches = None
    if eval_set is not None:
        eval_batches = image_batches(eval_set, data.spec, batch_size=min(1024, max(256, setup.batch_size)),
                                     train=False)
    meta = {"arch": setup.arch, "arch_options": setup.arch_options, "classes": data.classes,
            "spec": data.spec.to_dict(), "tta": setup.tta, "recipe": hyp["name"], "dataset": info["name"],
            "val_fraction": val_fraction, "seed": seed}
    trainer = Trainer(setup.model, train_batches, val=eval_batches, config=setup.config,
                      param_groups=setup.param_groups, callbacks=setup.callbacks, out_dir=out, meta=meta,
                      eval_split=data.eval_split or "val")
    result = trainer.fit(resume=opts.resume)
    outcome = RunOutcome(out, result.stopped, history=result.history, elapsed=result.elapsed, is_main=rank == 0)
    if result.stopped == "interrupted" or rank != 0:
        return outcome
    model = trainer.module.to("cpu").to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model = model.float().eval()
    from imgclf.train.models import TTA

    served = TTA(model, setup.tta).eval() if setup.tta else model
    outcome.package, outcome.evaluation = finish(out, served, data=data, hyp=hyp, setup=setup, result=result,
                                                 name=package_name(opts.name or f"{info['name']}-{opts.recipe}"))
    return outcome


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    if not skipped:
        return
    print(f"imgclf: warning: skipped {len(skipped)} unreadable image file(s):", file=sys.stderr)
    for f, reason in skipped[:10]:
        print(f"  {f}: {reason}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"  ... and {len(skipped) - 10} more (listed in run.json)", file=sys.stderr)


def provenance_of(served: nn.Module, *, data: TrainingData, hyp: dict[str, Any], setup: Setup,
                  result: FitResult) -> Provenance:
    """The package's record of this run (the metrics measured on the package are added by publish)."""
    info = data.describe()
    history = result.history
    eval_split = data.eval_split or "val"
    best_eval = max((r["val_acc"] for r in history if r.get("val_acc") is not None), default=None)
    dataset = DatasetRecord(name=info["name"], path=info["path"], format=info["format"], classes=tuple(data.classes),
                            splits={k: info[k] for k in ("train", "val", "test")}, val_from=info["val_from"],
                            skipped_files=len(info["skipped"]))
    training = {
        "arch_options": setup.arch_options, "recipe": hyp["name"],
        "recipe_settings": {k: hyp[k] for k in ("net", "opt", "aug", "eval", "data", "run")},
        "epochs": result.epochs, "steps": result.steps, "seed": int(hyp["run"]["seed"]), "stopped": result.stopped,
        "training_seconds": round(result.elapsed, 1), "precision": result.precision,
        "channels_last": result.channels_last, "threads": result.threads, "test_time_augmentation": setup.tta,
        "eval_split": eval_split,
    }
    metrics = {f"best_{eval_split}_accuracy": best_eval,
               "final_train_accuracy": history[-1]["train_acc"] if history else None}
    return Provenance(architecture=setup.arch, task="train", num_params=_count(served),
                      dataset=dataset, metrics=metrics, training=training)


def finish(out: Path, served: nn.Module, *, data: TrainingData, hyp: dict[str, Any], setup: Setup,
           result: FitResult, name: str) -> tuple[Path, dict[str, Any] | None]:
    """Publish the package (evaluated through the serving path on the test split, else val), then
    write the plots and report.md."""
    from imgclf.publish import publish

    example = data.train.images[0].permute(1, 2, 0).numpy()
    if example.shape[-1] == 1:
        example = example.repeat(3, axis=-1)
    test_split = "test" if "test" in data.raw.splits else ("val" if "val" in data.raw.splits else None)

    def report(published: Published) -> None:
        _write_report(out, published, name=name, data=data, hyp=hyp, setup=setup, result=result)

    published = publish(served, out / "package", name=name, labels=list(data.classes), spec=data.spec,
                        provenance=provenance_of(served, data=data, hyp=hyp, setup=setup, result=result),
                        check_image=example, dataset=data.raw, eval_splits=[test_split] if test_split else [],
                        report=report)
    ev = published.evaluations.get(test_split) if test_split else None
    return published.package.path, ev.to_dict() if ev is not None else None


def _write_report(out: Path, published: Published, *, name: str, data: TrainingData, hyp: dict[str, Any],
                  setup: Setup, result: FitResult) -> None:
    """metrics.json and confusion_matrix.png (of the package's evaluation), learning_curves.png, report.md."""
    from imgclf.evaluation import plot_learning_curves, write_evaluation, write_run_report

    info = data.describe()
    history = result.history
    eval_split = data.eval_split or "val"
    evaluation = None
    for split, ev in published.evaluations.items():
        write_evaluation(ev, out, title=f"{name}: {split} split")
        evaluation = ev.to_dict()
    if history:
        plot_learning_curves(history, out / "learning_curves.png", title=f"{name} ({hyp['name']})",
                             eval_split=eval_split)
    facts = {
        "recipe": f"`{hyp['name']}` ({hyp.get('adds')})",
        "architecture": f"{setup.arch}, {published.package.meta.provenance.num_params:,} parameters",
        "dataset": f"{info['name']} ({info['format']}, {info['path']}): {info['train']:,} train, "
                   f"{info['val']:,} val, {info['test']:,} test images"
                   + (f", val = {info['val_from']}" if info["val_from"] else ""),
        "evaluated each epoch on": eval_split, "stopped": result.stopped,
        "precision": f"{result.precision}{' + channels_last' if result.channels_last else ''}, "
                     f"{result.threads} CPU thread(s)" if result.threads else result.precision,
        "test-time augmentation": {0: "none", 1: "mirror", 2: "mirror + translate"}[setup.tta],
        "package": "`package/`",
    }
    notes = []
    if info["skipped"]:
        notes.append(f"{len(info['skipped'])} unreadable file(s) skipped (see run.json)")
    if eval_split == "test":
        notes.append("no validation split: the test split was watched during training, as in the original "
                     "CIFAR-10 experiments (use --val-fraction for an unbiased choice of epoch)")
    write_run_report(out, title=f"Training run: {name}", facts=facts, evaluation=evaluation, history=history,
                     eval_split=eval_split, notes=notes)


def environment() -> dict[str, Any]:
    """Where the run happened, for run.json."""
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "processes": int(os.environ.get("WORLD_SIZE", "1"))}
