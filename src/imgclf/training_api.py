"""The Python front door to training: :func:`train` and :func:`finetune` return the published package.

::

    import imgclf

    package = imgclf.train("cifar-10-python.tar.gz", recipe="fast", epochs=5, out="runs/fast")
    package = imgclf.finetune("photos/", model="efficientnet_lite0", out="models/pets")
    package.path, package.labels, package.meta.provenance.metrics

Each call is one run, exactly as the command line does it (``imgclf train`` and ``imgclf finetune``
parse their flags into the same typed options and call :func:`run_training` and
:func:`run_finetuning`, the functions these wrap): the same run folder, checkpoints, report and
package. An interrupted run (Ctrl-C, SIGTERM) keeps its checkpoints and raises
:class:`TrainingInterrupted`; ``resume=True`` continues it as ``--resume`` does: with ``out`` alone
the run goes on with the options it was started with, options given again replace them (except what
the checkpoints depend on: the data, the model, the image size, the seed and split).

Importing this module loads neither torch nor the training code; a call does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.errors import UserError
from imgclf.package import ModelPackage, load_package

if TYPE_CHECKING:
    from imgclf.finetune.options import FinetuneOptions
    from imgclf.finetune.run import FinetuneResult
    from imgclf.train.run import RunOptions, RunOutcome

__all__ = ["TrainingInterrupted", "finetune", "parse_duration", "parse_sets", "run_finetuning", "run_training",
           "train"]


class TrainingInterrupted(UserError):
    """Training was stopped by Ctrl-C or SIGTERM; its checkpoints are kept for ``resume=True``."""

    exit_code = 130


# -- option parsing shared by the commands and the functions ------------------------------------

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """Seconds from '900', '900s', '20m', '1.5h' or '1h30m'."""
    m = _DURATION.match(text.strip().lower())
    if not text.strip() or m is None or not any(m.groupdict().values()):
        raise UserError(f"cannot read {text!r} as a duration; use e.g. 900, 20m or 1h30m")
    h, mi, s = (float(m.group(k) or 0) for k in ("h", "m", "s"))
    seconds = h * 3600 + mi * 60 + s
    if seconds <= 0:
        raise UserError("the time budget must be positive")
    return seconds


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["opt.lr=0.1", ...]`` (``--set`` arguments) -> ``{"opt.lr": "0.1", ...}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def check_run_options(opts: RunOptions) -> None:
    """What must hold before a run starts (the rest is checked by the recipe and the data)."""
    if not opts.out:
        raise UserError("--out is required (the run directory)")
    for name in ("epochs", "batch_size", "lr"):
        v = getattr(opts, name)
        if v is not None and v <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if opts.time_budget is not None and opts.time_budget <= 0:
        raise UserError("the time budget must be positive")


# -- training from scratch --------------------------------------------------------------------


def run_training(options: RunOptions) -> RunOutcome:
    """One training run (or its resumption) from typed options: what ``imgclf train`` runs.

    Returns the run's outcome on every rank; only rank 0's carries the package. The caller leaves
    the torchrun process group (:func:`imgclf.train.runtime.leave_distributed`) when done.
    """
    from imgclf.train.run import train as train_run

    check_run_options(options)
    return train_run(options)  # resolves the options: defaults, or on resume the saved ones


def train(data: str | Path | None = None, *, out: str | Path, recipe: str | None = None, format: str = "auto",
          arch: str | None = None, epochs: float | None = None, batch_size: int | None = None,
          lr: float | None = None, seed: int | None = None, val_fraction: float | None = None,
          image_size: int | None = None, grayscale: bool | None = None, early_stopping: int | None = None,
          time_budget: float | str | None = None, precision: str | None = None, channels_last: bool | None = None,
          tta: int | None = None, overrides: Mapping[str, Any] | None = None, name: str | None = None,
          threads: int | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
          workers: int | None = None, progress: bool | None = None, resume: bool = False) -> ModelPackage:
    """Train a classifier from scratch and return its published model package (``out/package``).

    ``data``: a CIFAR-10 python folder or ``.tar.gz``, an image folder (``train/`` + ``test/`` or
    ``val/``, or one level of class folders) or a folder of IDX files; ``None`` with
    ``format="fashion-mnist"`` reads Debian's copy. ``recipe``: a named recipe (default ``vgg``;
    ``imgclf train --list-recipes`` prints them all); ``epochs``, ``batch_size``, ``lr``, ``seed``,
    ``val_fraction``, ``early_stopping`` (patience), ``precision``, ``channels_last``, ``tta`` and
    ``arch`` override the recipe, and ``overrides`` any setting by its dotted path
    (``{"opt.label_smoothing": 0.1}``). ``time_budget``: seconds or a duration like ``"20m"``.
    ``out`` is the run folder (checkpoints, history, ``report.md``, ``package/``); ``resume=True``
    continues the run there with its saved options (``imgclf.train(out=..., resume=True)`` is
    enough), the options given replacing them. Raises :class:`TrainingInterrupted` when stopped by
    Ctrl-C.
    """
    from imgclf.train.run import RunOptions
    from imgclf.train.runtime import barrier, in_process_group, leave_distributed

    budget = parse_duration(time_budget) if isinstance(time_budget, str) else time_budget
    opts = RunOptions(
        out=str(out), data=str(data) if data is not None else None, format=format, recipe=recipe,  # type: ignore[arg-type]
        arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction,
        image_size=image_size, grayscale=grayscale, early_stopping=early_stopping, time_budget=budget,
        precision=precision, channels_last=channels_last, tta=tta, overrides=dict(overrides or {}), name=name,
        threads=threads, cache_dir=str(cache_dir) if cache_dir is not None else None, use_cache=use_cache,
        workers=workers, progress=progress, resume=resume,
    )
    joined_before = in_process_group()  # a group the caller set up is theirs to end
    try:
        outcome = run_training(opts)
        barrier()  # under torchrun the other ranks wait for rank 0's package
    finally:
        if not joined_before:
            leave_distributed()
    if outcome.stopped == "interrupted":
        raise TrainingInterrupted(f"training interrupted; its checkpoints are in {outcome.out}: "
                                  "call again with resume=True to continue")
    return load_package(outcome.package if outcome.package is not None else Path(outcome.out) / "package")


# -- fine-tuning ------------------------------------------------------------------------------


def run_finetuning(options: FinetuneOptions, log: Callable[[str], None] = print) -> FinetuneResult:
    """One fine-tuning run (or its resumption) from typed options: what ``imgclf finetune`` runs."""
    from imgclf.finetune.run import finetune as finetune_run

    return finetune_run(options, log=log)


def finetune(data: str | Path | None = None, *, out: str | Path | None = None, model: str | None = None,
             weights: str | Path | None = None, name: str | None = None, epochs: int | None = None,
             freeze_epochs: int | None = None, image_size: int | None = None, augment: str | None = None,
             lr: float | None = None, finetune_lr: float | None = None, lr_decay: float | None = None,
             groups: int | None = None, batch_size: int | None = None, val_fraction: float | None = None,
             patience: int | None = None, seed: int | None = None, label_smoothing: float | None = None,
             tta: int | None = None, cache_dir: str | Path | None = None, use_cache: bool = True,
             allow_download: bool = True, threads: int | None = None, workers: int | None = None,
             progress: bool | None = None, resume: bool = False, publish_to: str | Path | None = None,
             add_data: Sequence[str | Path] = (), parent: str | Path | None = None,
             log: Callable[[str], None] | None = print) -> ModelPackage:
    """Fine-tune pretrained zoo ``model`` on a folder of images and return the package written to ``out``.

    ``data``: ``FOLDER/<class>/*.jpg``, or ``FOLDER/train/<class>/...`` with optional ``val/`` and
    ``test/``. Stage 1 trains a new head on the frozen backbone's cached features for up to
    ``freeze_epochs`` (default 10); stage 2 trains all layers for up to ``epochs`` (default 5) with
    layer-wise rates (``finetune_lr``, default ``lr / 4``; each of ``groups`` (4) nearer the input at
    ``lr_decay`` (0.5) times the next) and the ``augment`` preset (``none``, ``light``, ``default``,
    ``strong``); both stop early after ``patience`` (3) epochs without a better validation accuracy.
    ``model`` defaults to ``efficientnet_lite0``, ``lr`` to 1e-3, ``batch_size`` to 32,
    ``val_fraction`` to 0.2, ``label_smoothing`` to 0.1, ``seed`` to 0. ``weights``: a local
    weights file instead of the official ones; ``allow_download=False`` never downloads. ``log``
    receives the progress lines (``None``: quiet). Raises :class:`TrainingInterrupted` when stopped
    by Ctrl-C; ``resume=True`` continues the run in ``out`` with its saved options
    (``imgclf.finetune(out=..., resume=True)`` is enough), the options given replacing them.
    ``publish_to`` (instead of ``out``) publishes the next version of ``publish_to/<name>``;
    ``add_data`` folders (feedback exports) join the training split; ``parent`` is the package the
    new version follows (as ``--publish-to``, ``--add-data`` and ``--parent``).
    """
    from imgclf.finetune.lineage import version_options
    from imgclf.finetune.state import resolve_options

    v = version_options(out=None if out is None else str(out), publish_to=None if publish_to is None else str(publish_to),
                        name=name, parent=None if parent is None else str(parent), base=model, image_size=image_size)
    opts = resolve_options({
        "out": v["out"], "resume": resume, "data": str(data) if data is not None else None, "base": v["base"],
        "weights": str(weights) if weights is not None else None, "name": v["name"], "epochs": epochs,
        "add_data": [str(p) for p in add_data] or None, "parent": v["parent"], "version": v["version"],
        "freeze_epochs": freeze_epochs, "image_size": v["image_size"], "augment": augment, "lr": lr,
        "finetune_lr": finetune_lr, "lr_decay": lr_decay, "groups": groups, "batch_size": batch_size,
        "val_fraction": val_fraction, "patience": patience, "seed": seed, "label_smoothing": label_smoothing,
        "tta": tta, "cache_dir": str(cache_dir) if cache_dir is not None else None, "use_cache": use_cache,
        "allow_download": allow_download, "threads": threads, "workers": workers, "progress": progress,
    })
    result = run_finetuning(opts, log=log if log is not None else _quiet)
    if result.stopped == "interrupted":
        raise TrainingInterrupted(f"fine-tuning interrupted; its checkpoints are in {result.out}/training: "
                                  "call again with resume=True to continue")
    return load_package(result.package if result.package is not None else result.out)


def _quiet(_: str) -> None:
    return None
