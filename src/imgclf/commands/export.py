from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a zoo model to a model package (model.onnx + model.json), checked against torch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo model name (see 'imgclf models')")
    p.add_argument("--out", required=True, help="package directory to write")
    p.add_argument("--weights", metavar="FILE", help="local .pth/.safetensors (or Keras .h5 for VGG) weights")
    p.add_argument("--offline", action="store_true", help="never download weights")


def run(args: argparse.Namespace) -> int:
    from imgclf.publish import export_zoo_model
    from imgclf.resolve import zoo_entry

    zoo_entry(args.model)  # an unknown name is a one-line error before anything is built

    published = export_zoo_model(args.model, args.out, weights=args.weights, allow_download=not args.offline)
    pkg = published.package
    print(f"wrote {pkg.path} ({pkg.onnx_path.stat().st_size / 1e6:.1f} MB ONNX, {len(pkg.labels)} labels)")
    print(f"ONNX Runtime vs torch on a real photo: max abs logit difference {published.check.max_abs_diff:.2e}, "
          f"same top-1 class ({published.check.top1_onnx})")
    return 0
