from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import UserError

if TYPE_CHECKING:
    from imgclf.resolve import LoadedModel

NAME = "evaluate"
HELP = ("accuracy, top-5, per-class precision/recall and a confusion matrix of a package or checkpoint on a "
        "dataset; with two models, both side by side")
EPILOG = """\
examples:
  imgclf evaluate models/pets --data photos/
  imgclf evaluate models/pets/1 models/pets/2 --data photos/test --data corrections/   # compare two versions
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("model", nargs="+", metavar="MODEL",
                   help="model package directory (or a version folder, or a folder of versions: its default), "
                        "a training checkpoint (.pt), a Keras model file (.h5/.keras) or a zoo model name; "
                        "give two to compare them on the same images")
    p.add_argument("--data", action="append", default=[], metavar="DATA",
                   help="dataset (same forms as 'imgclf train --data'); with two models, repeat it to compare "
                        "on several (e.g. a test folder and the corrected images)")
    p.add_argument("--format", default="auto", choices=["auto", "cifar10", "folder", "idx", "fashion-mnist", "mnist"])
    p.add_argument("--split", choices=["test", "val", "train"], help="default: test, else val")
    p.add_argument("--val-fraction", type=float,
                   help="for datasets without val/ and test/: the fraction split off as val (default: as in training)")
    p.add_argument("--seed", type=int, help="seed of that split (default: as in training)")
    p.add_argument("--out", help="folder for metrics.json and confusion_matrix.png, or with two models "
                                 "compare.json (default: eval-MODELNAME, compare-NAME)")
    p.add_argument("--engine", choices=["auto", "onnxruntime", "openvino", "torch"], default=None,
                   help="runtime (as in 'imgclf predict'; default: ONNX Runtime for packages, torch for "
                        "zoo names and checkpoints)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default=None,
                   help="fp32, bf16, int8 or auto (default: auto with --engine auto, else fp32)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decode threads")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true")


def split_defaults(loaded: LoadedModel) -> tuple[float | None, int]:
    """The validation fraction and seed the model was trained with, so its val split is rebuilt alike."""
    if loaded.checkpoint_meta is not None:
        meta = loaded.checkpoint_meta
        return meta.get("val_fraction"), int(meta.get("seed") or 0)
    if loaded.package is not None:
        settings = loaded.package.meta.provenance.training.get("recipe_settings") or {}
        return (settings.get("data") or {}).get("val_fraction"), int((settings.get("run") or {}).get("seed") or 0)
    return None, 0


def run(args: argparse.Namespace) -> int:
    from imgclf.data import open_dataset
    from imgclf.evaluation import evaluate_engine, format_evaluation, write_evaluation
    from imgclf.package import package_name
    from imgclf.resolve import open_model

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if len(args.model) > 2:
        raise UserError(f"give one model to evaluate or two to compare, not {len(args.model)}")
    if len(args.model) == 2:
        return compare(args)
    if len(args.data) > 1:
        raise UserError("several --data need two models to compare; evaluate one dataset at a time")
    args.data = args.data[0] if args.data else None
    loaded = open_model(args.model[0], runtime=args.engine or "default", precision=args.precision)
    engine = loaded.engine
    if loaded.choice is not None and (args.engine or args.precision):
        print(f"imgclf: engine {loaded.choice.describe()}", file=sys.stderr)
    trained_fraction, trained_seed = split_defaults(loaded)
    val_fraction = args.val_fraction if args.val_fraction is not None else trained_fraction
    seed = args.seed if args.seed is not None else trained_seed
    dataset = open_dataset(args.data, args.format, val_fraction=val_fraction, seed=seed)
    split = args.split or ("test" if "test" in dataset.splits else "val")
    ev = evaluate_engine(engine, dataset, split, batch_size=args.batch_size, workers=args.workers,
                         progress=False if args.no_progress else None)
    out = Path(args.out or f"eval-{package_name(engine.name)}")
    files = write_evaluation(ev, out, title=f"{engine.name} on {dataset.name} ({split})")
    if args.json:
        print(json.dumps(ev.to_dict(), indent=2))
    else:
        print(f"{engine.name} on {dataset.name}")
        print(format_evaluation(ev))
        print(f"wrote {' and '.join(str(f) for f in files.values())}")
    return 0


def _label(loaded: LoadedModel, arg: str) -> str:
    """How a model is named in the table: its name and version, or what the user typed."""
    engine = loaded.engine
    return f"{engine.name} v{engine.version}" if loaded.package is not None else arg


def compare(args: argparse.Namespace) -> int:
    """Two models on the same split of each --data, side by side (and compare.json)."""
    from imgclf.data import open_dataset
    from imgclf.evaluation.compare import compare_split, format_comparison
    from imgclf.package import package_name
    from imgclf.resolve import open_model

    if not args.data:
        raise UserError("--data is required: the images both models are compared on")
    a, b = (open_model(m, runtime=args.engine or "default", precision=args.precision) for m in args.model)
    for loaded in (a, b):
        if loaded.choice is not None and (args.engine or args.precision):
            print(f"imgclf: engine {loaded.choice.describe()}", file=sys.stderr)
    names = [_label(a, args.model[0]), _label(b, args.model[1])]
    if names[0] == names[1]:
        names = list(args.model)
    # A folder of class subfolders alone is compared on all its images (unless --val-fraction).
    val_fraction = args.val_fraction if args.val_fraction is not None else 0.0
    seed = args.seed if args.seed is not None else 0
    results = []
    for data in args.data:
        dataset = open_dataset(data, args.format, val_fraction=val_fraction, seed=seed)
        split = args.split or ("test" if "test" in dataset.splits else "val" if "val" in dataset.splits
                               else "train")
        result = compare_split(a.engine, b.engine, dataset, split, batch_size=args.batch_size,
                               workers=args.workers)
        if split == "train" and args.split is None:
            result.split = "all"  # a plain class-folder tree: every image
        results.append(result)
    doc = {"models": [{"model": arg, "name": m.engine.name, "version": m.engine.version, "label": label}
                      for arg, m, label in zip(args.model, (a, b), names, strict=True)],
           "datasets": [r.to_dict() for r in results]}
    out = Path(args.out or f"compare-{package_name(a.engine.name)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n\n".join(format_comparison(r, *names) for r in results))
        print(f"wrote {out / 'compare.json'}")
    return 0
