from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from imgclf.errors import UserError

NAME = "evaluate"
HELP = "accuracy, top-5, per-class precision/recall and a confusion matrix of a package or checkpoint on a dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model package directory, a training checkpoint (.pt), a Keras model file "
                                   "(.h5/.keras) or a zoo model name")
    p.add_argument("--data", help="dataset (same forms as 'imgclf train --data')")
    p.add_argument("--format", default="auto", choices=["auto", "cifar10", "folder", "idx", "fashion-mnist", "mnist"])
    p.add_argument("--split", choices=["test", "val", "train"], help="default: test, else val")
    p.add_argument("--val-fraction", type=float,
                   help="for datasets without val/ and test/: the fraction split off as val (default: as in training)")
    p.add_argument("--seed", type=int, help="seed of that split (default: as in training)")
    p.add_argument("--out", help="folder for metrics.json and confusion_matrix.png (default: eval-MODELNAME)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="decode threads")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true")


def _engine(model: str):  # noqa: ANN202 - an Engine
    """A checkpoint file runs in torch; a package on ONNX Runtime; a zoo name in torch."""
    from imgclf.importers import is_keras_file

    path = Path(model)
    if path.is_file() and not is_keras_file(path):  # a Keras model file goes through load_engine
        from imgclf.preprocess import PreprocessSpec
        from imgclf.torch_engine import TorchEngine
        from imgclf.train.loop import load_checkpoint
        from imgclf.train.models import model_from_checkpoint

        ckpt = load_checkpoint(path)
        meta = ckpt.get("meta") or {}
        try:
            net = model_from_checkpoint(ckpt)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"cannot rebuild the model of {path}: {exc}") from None
        engine = TorchEngine(net, name=str(meta.get("recipe", path.stem)), labels=list(meta["classes"]),
                             spec=PreprocessSpec.from_dict(meta["spec"]))
        return engine, {"val_fraction": meta.get("val_fraction"), "seed": meta.get("seed", 0)}
    from imgclf.resolve import load_engine

    engine = load_engine(model)
    prov = getattr(getattr(engine, "package", None), "meta", None)
    settings = (prov.provenance.get("recipe_settings") or {}) if prov is not None else {}
    return engine, {"val_fraction": (settings.get("data") or {}).get("val_fraction"),
                    "seed": (settings.get("run") or {}).get("seed", 0)}


def run(args: argparse.Namespace) -> int:
    from imgclf.train.evaluate import evaluate_engine, format_evaluation, write_evaluation
    from imgclf.train.sources import open_dataset

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    engine, split_defaults = _engine(args.model)
    val_fraction = args.val_fraction if args.val_fraction is not None else split_defaults["val_fraction"]
    seed = args.seed if args.seed is not None else int(split_defaults["seed"] or 0)
    dataset = open_dataset(args.data, args.format, val_fraction=val_fraction, seed=seed)
    split = args.split or ("test" if "test" in dataset.splits else "val")
    ev = evaluate_engine(engine, dataset, split, batch_size=args.batch_size, workers=args.workers,
                         progress=False if args.no_progress else None)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", engine.name).strip("-") or "model"
    out = Path(args.out or f"eval-{safe}")
    files = write_evaluation(ev, out, title=f"{engine.name} on {dataset.name} ({split})")
    if args.json:
        print(json.dumps(ev.to_dict(), indent=2))
    else:
        print(f"{engine.name} on {dataset.name}")
        print(format_evaluation(ev))
        print(f"wrote {files['metrics']} and {files['confusion_matrix']}")
    return 0
