"""``imgclf predict``: a thin wrapper over :func:`imgclf.resolve.open_model` (what :func:`imgclf.load`
calls) and :meth:`Classifier.predict_files`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from imgclf.errors import UserError

if TYPE_CHECKING:
    from imgclf.classifier import FileResult

NAME = "predict"
HELP = "classify image files or folders with a zoo model or a model package"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from imgclf.bulk.command import add_arguments as add_ray_arguments

    p.add_argument("images", nargs="+", metavar="SOURCE",
                   help="image files or folders (folders are searched recursively); with --ray also globs, "
                        "manifests and URIs")
    p.add_argument("--model", "-m", default=None,
                   help="zoo model name, package directory or Keras model file (.h5/.keras) "
                        "(default: efficientnet_lite0)")
    p.add_argument("--weights", metavar="FILE", help="local weights for a zoo model (.pth, .safetensors, .h5)")
    p.add_argument("--engine", choices=["auto", "onnxruntime", "openvino", "torch"], default=None,
                   help="runtime: onnxruntime, openvino (the openvino extra) or auto (the fastest that passed its "
                        "accuracy gate); a zoo name is then exported once into the package cache. "
                        "Default: ONNX Runtime for packages, torch for zoo names and checkpoints")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default=None,
                   help="fp32, bf16 (OpenVINO on CPUs with bf16), int8 (the package's int8/ variant from "
                        "'imgclf quantize') or auto (default: auto with --engine auto, else fp32)")
    p.add_argument("--top-k", "-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true")
    add_ray_arguments(p)


def run(args: argparse.Namespace) -> int:
    from imgclf.bulk import command as bulk

    bulk.validate(args)
    if args.ray:
        return bulk.run(args)
    from imgclf.classifier import Classifier
    from imgclf.pipeline import expand_paths
    from imgclf.resolve import open_model
    from imgclf.zoo.registry import DEFAULT_MODEL

    if args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    files = expand_paths(args.images)
    if not files:
        raise UserError("no image files found in " + ", ".join(args.images))
    loaded = open_model(args.model or DEFAULT_MODEL, weights=args.weights, runtime=args.engine or "default",
                        precision=args.precision)
    if loaded.choice is not None and (args.engine or args.precision):
        print(f"imgclf: engine {loaded.choice.describe()}", file=sys.stderr)
    classifier = Classifier(loaded.engine, batch_size=args.batch_size)
    results = classifier.predict_files(files, k=args.top_k, progress=False if args.no_progress else None)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print_table(results)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"imgclf: error: {r.file}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def print_table(results: Sequence[FileResult]) -> None:
    for r in results:
        print(r.file)
        if r.predictions is None:
            print(f"  error: {r.error}")
            continue
        for q in r.predictions:
            print(f"  {q.score:7.2%}  {q.label} ({q.index})")
