"""``imgclf import``: a whole Keras model file or an external ONNX classifier becomes a model package."""

from __future__ import annotations

import argparse
from typing import Any

from imgclf.errors import UserError

NAME = "import"
HELP = "turn a Keras model (.h5/.keras) or an external ONNX classifier into a model package"

# The ONNX import's defaults; a Keras import detects its own and takes only the flags given.
ONNX_DEFAULTS = {"size": 224, "crop_pct": 0.875, "resize": "shorter", "interpolation": "bilinear"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a whole Keras model (.h5 or .keras: architecture and weights), or an ONNX file "
                        "with one NCHW image input and one (batch, classes) output")
    p.add_argument("--labels", help="labels file: one per line, in output order (or a JSON list). Required for "
                                    "ONNX; for Keras, default MODEL.labels.txt beside the file, or ImageNet's "
                                    "for a 1000-way head")
    p.add_argument("--out", required=True, help="package directory to write")
    p.add_argument("--name", help="model name (default: the file's stem)")
    p.add_argument("--version", default="1")
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (ONNX default 224; Keras: the model's own input size)")
    p.add_argument("--crop-pct", type=float, default=None, help="centre-crop ratio (ONNX default 0.875)")
    p.add_argument("--resize", choices=["shorter", "squash"], default=None,
                   help="'shorter': resize shorter side then centre-crop; 'squash': resize to size x size "
                        "(ONNX default shorter; Keras default squash, as keras.utils.load_img)")
    p.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos"], default=None,
                   help="ONNX default bilinear; Keras default nearest, as keras.utils.load_img")
    p.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                   help="per-channel mean in the model's channel order (ONNX default ImageNet)")
    p.add_argument("--std", type=float, nargs="+", default=None, metavar="S")
    p.add_argument("--scale", type=float, default=None, help="pixel multiplier before mean/std (ONNX default 1/255)")
    p.add_argument("--bgr", action="store_true", help="the model takes BGR channels")
    p.add_argument("--caffe", action="store_true",
                   help="Keras 'caffe' preprocessing: BGR, 0-255, ImageNet means subtracted, squash resize")
    p.add_argument("--output-kind", choices=["logits", "probabilities"], help="default: detected")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The preprocessing fields given on the command line, as PreprocessSpec fields."""
    given = {
        "input_size": args.size, "crop_pct": args.crop_pct, "resize_mode": args.resize,
        "interpolation": args.interpolation, "scale": args.scale,
        "mean": tuple(args.mean) if args.mean else None, "std": tuple(args.std) if args.std else None,
        "channel_order": "BGR" if args.bgr else None,
    }
    return {k: v for k, v in given.items() if v is not None}


def _run_keras(args: argparse.Namespace) -> int:
    from imgclf.importers.keras import import_keras
    from imgclf.importers.keras_cache import sidecar_labels_file
    from imgclf.package import read_labels_file

    labels_file = args.labels or sidecar_labels_file(args.model)  # model.labels.txt beside the model
    labels = read_labels_file(labels_file) if labels_file else None
    try:
        report = import_keras(args.model, args.out, labels=labels, name=args.name, version=args.version,
                              overrides=_overrides(args), caffe=args.caffe, output_kind=args.output_kind)
    except ValueError as exc:  # an invalid combination of preprocessing flags
        if isinstance(exc, UserError):
            raise
        raise UserError(str(exc)) from None
    pkg, spec = report.package, report.package.spec
    print(f"wrote {pkg.path}: {pkg.name} v{pkg.meta.version}, {len(pkg.labels)} labels, "
          f"output {pkg.meta.output_kind}, input {spec.channels}x{spec.input_size}x{spec.input_size}")
    print(f"Keras base: {report.base or 'none recognised'}; preprocessing: {report.preprocessing}")
    print(f"ONNX Runtime vs Keras on a real photo: max abs difference {report.max_abs_diff:.3g}")
    return 0


def _run_onnx(args: argparse.Namespace) -> int:
    from imgclf.package import import_onnx, read_labels_file
    from imgclf.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, caffe_spec

    if not args.labels:
        raise UserError("importing an ONNX model needs --labels FILE (one class name per line, in output order)")
    labels = read_labels_file(args.labels)
    size = args.size or ONNX_DEFAULTS["size"]
    try:
        if args.caffe:
            spec = caffe_spec(size)
        else:
            spec = PreprocessSpec(
                input_size=size, crop_pct=args.crop_pct or ONNX_DEFAULTS["crop_pct"],
                resize_mode=args.resize or ONNX_DEFAULTS["resize"],
                interpolation=args.interpolation or ONNX_DEFAULTS["interpolation"],
                mean=tuple(args.mean or IMAGENET_MEAN), std=tuple(args.std or IMAGENET_STD),
                scale=args.scale if args.scale is not None else 1 / 255,
                channel_order="BGR" if args.bgr else "RGB",
            )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    pkg = import_onnx(args.model, args.out, labels=labels, spec=spec, name=args.name,
                      version=args.version, output_kind=args.output_kind)
    print(f"wrote {pkg.path}: {pkg.name} v{pkg.meta.version}, {len(pkg.labels)} labels, "
          f"output {pkg.meta.output_kind}, input {spec.channels}x{spec.input_size}x{spec.input_size}")
    return 0


def _is_keras(path: str) -> bool:
    """By content: HDF5 and zip (.keras) files are Keras models, anything else is tried as ONNX."""
    from imgclf.importers import KERAS_SUFFIXES
    from imgclf.importers.keras_file import HDF5_MAGIC, ZIP_MAGIC

    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return path.lower().endswith(KERAS_SUFFIXES)
    return head == HDF5_MAGIC or head.startswith(ZIP_MAGIC)


def run(args: argparse.Namespace) -> int:
    return _run_keras(args) if _is_keras(args.model) else _run_onnx(args)
