from __future__ import annotations

import argparse

from imgclf.errors import UserError

NAME = "import"
HELP = "wrap an external ONNX classifier (e.g. converted from Keras) into a model package"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx", help="ONNX file with one NCHW image input and one (batch, classes) output")
    p.add_argument("--labels", required=True, help="labels file: one per line, in output order (or a JSON list)")
    p.add_argument("--out", required=True, help="package directory to write")
    p.add_argument("--name", help="model name (default: the file's stem)")
    p.add_argument("--version", default="1")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--crop-pct", type=float, default=0.875, help="centre-crop ratio (default 0.875)")
    p.add_argument("--resize", choices=["shorter", "squash"], default="shorter",
                   help="'shorter': resize shorter side then centre-crop; 'squash': resize to size x size")
    p.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos"], default="bilinear")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="per-channel mean in the model's channel order (default ImageNet)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    p.add_argument("--scale", type=float, default=None, help="pixel multiplier before mean/std (default 1/255)")
    p.add_argument("--bgr", action="store_true", help="the model takes BGR channels")
    p.add_argument("--caffe", action="store_true",
                   help="Keras 'caffe' preprocessing: BGR, 0-255, ImageNet means subtracted, squash resize")
    p.add_argument("--output-kind", choices=["logits", "probabilities"], help="default: detected")


def run(args: argparse.Namespace) -> int:
    from imgclf.package import import_onnx, read_labels_file
    from imgclf.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, caffe_spec

    labels = read_labels_file(args.labels)
    try:
        if args.caffe:
            spec = caffe_spec(args.size)
        else:
            spec = PreprocessSpec(
                input_size=args.size, crop_pct=args.crop_pct, resize_mode=args.resize,
                interpolation=args.interpolation, mean=tuple(args.mean or IMAGENET_MEAN),
                std=tuple(args.std or IMAGENET_STD), scale=args.scale if args.scale is not None else 1 / 255,
                channel_order="BGR" if args.bgr else "RGB",
            )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    pkg = import_onnx(args.onnx, args.out, labels=labels, spec=spec, name=args.name,
                      version=args.version, output_kind=args.output_kind)
    print(f"wrote {pkg.path}: {pkg.name} v{pkg.meta.version}, {len(pkg.labels)} labels, "
          f"output {pkg.meta.output_kind}, input {spec.channels}x{spec.input_size}x{spec.input_size}")
    return 0
