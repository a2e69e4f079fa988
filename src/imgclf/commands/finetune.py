"""``imgclf finetune``: flags -> :class:`~imgclf.finetune.options.FinetuneOptions` ->
:func:`imgclf.training_api.run_finetuning`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imgclf.finetune.options import FinetuneOptions

NAME = "finetune"
HELP = "fine-tune a pretrained zoo model on a folder of class subfolders and write a model package"
EPILOG = """\
stages:
  1. the new head alone on the frozen backbone's features (computed once, cached on disk)
  2. all layers, with smaller learning rates toward the input and augmentation on top of the
     base model's preprocessing; early stopping on validation accuracy in both, best kept

examples:
  imgclf finetune --data photos/ --out models/pets
  imgclf finetune --data photos/ --base vgg16 --epochs 3 --augment light --out models/pets-vgg
  imgclf finetune --out models/pets --resume     # continue an interrupted run, same options
  imgclf serve --model models/pets
  imgclf finetune --data photos/ --add-data corrections/ --publish-to models --name pets   # version N+1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    # Defaults are applied by FinetuneOptions, so that --resume can tell the options given from the rest.
    p.add_argument("--data", metavar="FOLDER",
                   help="FOLDER/<class>/*.jpg, or FOLDER/train/<class>/... with optional val/ and test/ "
                        "(required unless --resume)")
    p.add_argument("--out", metavar="DIR", help="package directory to write (servable as is)")
    p.add_argument("--publish-to", metavar="MODEL_DIR",
                   help="instead of --out: publish the next version of MODEL_DIR/<--name>/ (1/, 2/, ...), "
                        "recording the current default version as its parent; the default is not changed")
    p.add_argument("--add-data", action="append", default=[], metavar="DIR",
                   help="more class subfolders for the training split only, e.g. an 'imgclf feedback export' "
                        "folder (its feedback record ids are recorded); repeatable")
    p.add_argument("--parent", metavar="PACKAGE",
                   help="the package (or version folder) this model follows: its classes must be kept, its "
                        "version and sha256 are recorded, its base model and image size are the defaults"),
    p.add_argument("--base", metavar="NAME",
                   help="zoo model to start from (default efficientnet_lite0; see 'imgclf models')")
    p.add_argument("--weights", metavar="FILE", help="local weights for the base model instead of the official ones")
    p.add_argument("--name", help="model name in the package (default: the --out folder's name)")
    p.add_argument("--epochs", type=int, help="epochs with all layers unfrozen (default 5)")
    p.add_argument("--freeze-epochs", type=int,
                   help="epochs for the head alone on cached backbone features (default 10)")
    p.add_argument("--image-size", type=int, metavar="PX", help="input side (default: the base model's)")
    p.add_argument("--augment", choices=["none", "light", "default", "strong"],
                   help="training augmentation: random resized crop, flip, colour jitter (default 'default')")
    p.add_argument("--lr", type=float, help="learning rate of the head stage (AdamW, default 1e-3)")
    p.add_argument("--finetune-lr", type=float, metavar="LR",
                   help="learning rate of the head and last layer group when all layers train (default lr/4)")
    p.add_argument("--lr-decay", type=float,
                   help="each layer group nearer the input trains at this times the next group's rate (default 0.5)")
    p.add_argument("--groups", type=int, help="layer groups for layer-wise rates (default 4)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 32)")
    p.add_argument("--val-fraction", type=float,
                   help="share of each class held out for validation when the folder has no val/ (default 0.2)")
    p.add_argument("--patience", type=int,
                   help="stop a stage after this many epochs without a better validation accuracy (default 3)")
    p.add_argument("--label-smoothing", type=float, help="(default 0.1)")
    p.add_argument("--tta", type=int, choices=[0, 1],
                   help="1: the package averages each image's logits with its mirror image's (twice the compute)")
    p.add_argument("--seed", type=int, help="seed for the split, initialisation and batches")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the options it was started with")
    p.add_argument("--cache-dir", metavar="DIR", help="where decoded images and features are cached "
                   "(default: $IMGCLF_HOME or ~/.cache/imgclf)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the caches")
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all available)")
    p.add_argument("--workers", type=int, help="processes decoding images (default: one per CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def options_from_args(args: argparse.Namespace) -> FinetuneOptions:
    """The command's flags as the typed options :func:`imgclf.training_api.run_finetuning` takes: the
    flags given, the defaults, or with ``--resume`` the options the run in ``--out`` was started with."""
    from imgclf.finetune.lineage import version_options
    from imgclf.finetune.state import resolve_options

    v = version_options(out=args.out, publish_to=args.publish_to, name=args.name, parent=args.parent,
                        base=args.base, image_size=args.image_size)
    return resolve_options({
        "out": v["out"], "add_data": args.add_data or None, "parent": v["parent"], "version": v["version"], "resume": args.resume, "data": args.data, "base": v["base"], "weights": args.weights,
        "name": v["name"], "epochs": args.epochs, "freeze_epochs": args.freeze_epochs,
        "image_size": v["image_size"], "augment": args.augment, "lr": args.lr, "finetune_lr": args.finetune_lr,
        "lr_decay": args.lr_decay, "groups": args.groups, "batch_size": args.batch_size,
        "val_fraction": args.val_fraction, "patience": args.patience, "seed": args.seed,
        "label_smoothing": args.label_smoothing, "tta": args.tta, "cache_dir": args.cache_dir,
        "threads": args.threads, "workers": args.workers,
        "use_cache": False if args.no_cache else None, "allow_download": False if args.offline else None,
        "progress": False if args.no_progress else None,
    })


def run(args: argparse.Namespace) -> int:
    import sys

    from imgclf.model_store import ModelStore
    from imgclf.training_api import run_finetuning

    opts = options_from_args(args)
    result = run_finetuning(opts)
    if result.stopped == "interrupted":
        print(f"imgclf: interrupted; checkpoints are in {result.out}/training; continue with: "
              f"imgclf finetune --out {result.out} --resume", file=sys.stderr)
        return 130
    if args.publish_to:
        default = ModelStore(result.out.parent).default_version()
        if default == opts.version:
            print(f"published version {opts.version} of {opts.name}, its default version; serve it with: "
                  f"imgclf serve --model-dir {args.publish_to}")
        else:
            print(f"published version {opts.version} of {opts.name} (default version: {default}); roll it out on a "
                  f"server with: POST /v1/models/{opts.name}/default {{\"version\": \"{opts.version}\"}}")
    return 0
