"""Cats vs dogs: fine-tuning a pretrained backbone vs training the small VGG from scratch.

Takes CIFAR-10 as JPEG folders (``DATA/train/<class>/*.jpg``, ``DATA/test/<class>/*.jpg``), links
its cat and dog folders into a two-class folder, then runs, one after the other on the same folders:

1. ``imgclf finetune`` from efficientnet_lite0 (or ``--base``), 20% of train held out for validation;
2. ``imgclf train --recipe vgg`` (the small VGG, from scratch) with the same 20% validation split.

Prints validation accuracy, test accuracy (2,000 test images, measured on each exported package
through the serving path) and wall time of each whole command, side by side, as markdown.

    python benchmarks/finetune.py /path/to/cifar10-jpg --image-size 128 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CLASSES = ("cat", "dog")


def link_classes(data: Path, dest: Path) -> Path:
    """``dest/{train,test}/{cat,dog}`` as symlinks into the CIFAR-10 JPEG folders."""
    for split in ("train", "test"):
        for cls in CLASSES:
            src = data / split / cls
            if not src.is_dir():
                sys.exit(f"{src} not found: DATA must hold train/<class>/ and test/<class>/ JPEG folders")
            link = dest / split / cls
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(src.resolve(), target_is_directory=True)
    return dest


def timed(argv: list[str]) -> float:
    from imgclf.cli import main

    print("$ imgclf " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"imgclf {argv[0]} exited with {code}")
    return wall


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="CIFAR-10 as JPEG folders (train/<class>/, test/<class>/)")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument("--base", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=128, help="fine-tuning input side (default 128)")
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs with all layers (default 3)")
    ap.add_argument("--freeze-epochs", type=int, default=10, help="head-only epochs (default 10)")
    ap.add_argument("--augment", default="light")
    ap.add_argument("--tta", type=int, choices=[0, 1], default=0, help="mirror test-time augmentation in the package")
    ap.add_argument("--cache-dir", type=Path, help="decoded-image and feature caches (default: WORK/cache)")
    ap.add_argument("--vgg-recipe", default="vgg", help="imgclf train recipe for the from-scratch run")
    ap.add_argument("--vgg-epochs", type=float, help="override the recipe's epochs")
    ap.add_argument("--skip-vgg", action="store_true")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="imgclf-bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = link_classes(args.data, work / "catdog")
    cache = str(args.cache_dir or work / "cache")
    rows = []

    ft_out = work / "finetuned"
    ft_argv = ["finetune", "--data", str(folder), "--base", args.base, "--out", str(ft_out),
               "--image-size", str(args.image_size), "--epochs", str(args.epochs),
               "--freeze-epochs", str(args.freeze_epochs), "--augment", args.augment, "--tta", str(args.tta),
               "--cache-dir", cache, "--no-progress"]
    wall = timed(ft_argv)
    m = json.loads((ft_out / "metrics.json").read_text())
    s = m["summary"]
    stages = m["stages"]
    tta = ", mirror TTA" if args.tta else ""
    rows.append((f"fine-tune {args.base} ({args.image_size} px, {stages.get('head', {}).get('epochs', 0):g} head + "
                 f"{stages.get('all', {}).get('epochs', 0):g} all-layer epochs{tta})", s["val_accuracy"], s.get("test_accuracy"), wall))

    if not args.skip_vgg:
        vgg_out = work / "vgg"
        vgg_argv = ["train", "--data", str(folder), "--recipe", args.vgg_recipe, "--val-fraction", "0.2",
                    "--out", str(vgg_out), "--cache-dir", cache, "--no-progress"]
        if args.vgg_epochs:
            vgg_argv += ["--epochs", str(args.vgg_epochs)]
        wall = timed(vgg_argv)
        meta = json.loads((vgg_out / "package" / "model.json").read_text())
        metrics = meta["provenance"]["metrics"]
        epochs = meta["provenance"].get("training", {}).get("epochs")
        rows.append((f"small VGG from scratch (recipe `{args.vgg_recipe}`, 32 px, {epochs} epochs)",
                     metrics.get("best_val_accuracy"), metrics.get("test_accuracy"), wall))

    import torch

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | val accuracy | test accuracy (2,000 images) | wall time |")
    print("|---|---:|---:|---:|")
    for label, val, test, wall in rows:
        print(f"| {label} | {fmt(val)} | {fmt(test)} | {wall / 60:.1f} min |")
    print(f"\nruns kept in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
