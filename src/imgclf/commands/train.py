"""``imgclf train``: flags -> :class:`~imgclf.train.run.RunOptions` -> :func:`imgclf.training_api.run_training`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from imgclf.errors import UserError

if TYPE_CHECKING:
    from imgclf.train.run import RunOptions, RunOutcome

NAME = "train"
HELP = "train a classifier from scratch (CIFAR-10, image folders, Fashion-MNIST) into a model package"

EPILOG = """examples:
  imgclf train --data cifar-10-python.tar.gz --recipe vgg --out runs/vgg
  imgclf train --data photos/ --recipe fast --epochs 5 --time-budget 20m --out runs/fast
  imgclf train --format fashion-mnist --recipe vgg --out runs/fashion
  imgclf train --out runs/vgg --resume                # continue an interrupted run
  torchrun --nproc_per_node=2 -m imgclf train --data ... --out runs/ddp
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--data", help="CIFAR-10 python folder or .tar.gz, an image folder (train/ + test/ or val/, "
                                  "or one level of class folders), or a folder of IDX files")
    p.add_argument("--format", default="auto",
                   choices=["auto", "cifar10", "folder", "idx", "fashion-mnist", "mnist"],
                   help="dataset format (default: detected); fashion-mnist defaults --data to Debian's copy")
    p.add_argument("--recipe", default=None, help="named recipe (default vgg; see --list-recipes)")
    p.add_argument("--arch", default=None, help="architecture (default: the recipe's): vgg1, vgg2, vgg3, fast")
    p.add_argument("--epochs", type=float, help="epochs (fractions allowed)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (in the recipe's units)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=False, help="run directory: checkpoints, history, report, package/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--val-fraction", type=float,
                   help="hold out this fraction of train (stratified) as the validation split")
    p.add_argument("--image-size", type=int, help="train at this size (images are squashed; default: native, 32 for folders)")
    p.add_argument("--grayscale", action="store_true", default=None, help="train on grayscale images")
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="stop when validation loss has not improved for PATIENCE epochs (restores the best weights)")
    p.add_argument("--time-budget", metavar="DURATION", help="stop cleanly after this much training, e.g. 900, 20m, 1h30m")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto (default) times fp32 vs bf16 on this machine and keeps the faster")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default=None,
                   help="memory layout (default auto: measured on CPU, on for CUDA)")
    p.add_argument("--tta", type=int, choices=[0, 1, 2], help="test-time augmentation level exported in the package")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe setting, e.g. --set opt.label_smoothing=0.1 --set net.widths=16,32,64")
    p.add_argument("--name", help="model name in the package (default: DATASET-RECIPE)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: the CPUs / processes)")
    p.add_argument("--cache-dir", help="where decoded image folders are cached (default ~/.cache/imgclf/datasets)")
    p.add_argument("--no-cache", action="store_true", help="decode image folders without reading or writing the cache")
    p.add_argument("--workers", type=int, help="processes decoding image folders (default: the CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch instead)")
    p.add_argument("--list-recipes", action="store_true", help="print every recipe's settings and exit")


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The command's flags as the typed options :func:`imgclf.training_api.run_training` takes."""
    from imgclf.train.run import RunOptions
    from imgclf.training_api import parse_duration, parse_sets

    if not args.out:
        raise UserError("--out is required (the run directory)")
    channels_last = {None: None, "auto": None, "on": True, "off": False}[args.channels_last]
    return RunOptions(
        out=args.out, data=args.data, format=args.format, recipe=args.recipe, arch=args.arch,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        val_fraction=args.val_fraction, image_size=args.image_size, grayscale=args.grayscale,
        early_stopping=args.early_stopping,
        time_budget=parse_duration(args.time_budget) if args.time_budget else None,
        precision=args.precision, channels_last=channels_last, tta=args.tta, overrides=parse_sets(args.set),
        name=args.name, threads=args.threads, cache_dir=args.cache_dir, use_cache=not args.no_cache,
        workers=args.workers, progress=False if args.no_progress else None, resume=args.resume,
    )


def print_recipes() -> None:
    from imgclf.train.recipes import RECIPES, describe

    for name, hyp in RECIPES.items():
        print(f"== {name}: {hyp.get('adds')}")
        print(describe(hyp))


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        print_recipes()
        return 0
    from imgclf.train.runtime import leave_distributed
    from imgclf.training_api import run_training

    opts = options_from_args(args)
    try:
        outcome = run_training(opts)
    finally:
        leave_distributed()
    if not outcome.is_main:
        return 0
    if outcome.stopped == "interrupted":
        print(f"interrupted; continue with: imgclf train --out {outcome.out} --resume", file=sys.stderr)
        return 130
    print_summary(outcome)
    return 0


def print_summary(outcome: RunOutcome) -> None:
    last = outcome.history[-1] if outcome.history else {}
    print(f"stopped: {outcome.stopped} after {last.get('epoch_float', 0)} epochs, {outcome.elapsed:.0f} s of training")
    ev = outcome.evaluation
    if ev is not None:
        top5 = f", top-5 {ev['top5']:.2%}" if ev.get("top5") is not None else ""
        print(f"{ev['split']} accuracy of the package: {ev['accuracy']:.2%}{top5} ({ev['n']:,} images)")
    print(f"package: {outcome.package}")
    print(f"report:  {outcome.out / 'report.md'}")
