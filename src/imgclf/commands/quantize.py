from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.errors import UserError
from imgclf.quantize.fixes import DEFAULT_FIXES

NAME = "quantize"
HELP = "write an int8 copy of a model package (calibrated, accuracy-gated against fp32)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("package", help="fp32 model package directory")
    p.add_argument("--calibration", metavar="FOLDER",
                   help="images like the ones the model will see (default: the package's validation split, "
                        "or for a zoo model the photos shipped with imgclf)")
    p.add_argument("--eval", metavar="FOLDER",
                   help="labelled folder (class subfolders) to gate on (default: the package's test or "
                        "validation split, or for a zoo model the shipped photos held out from calibration)")
    p.add_argument("--photos", metavar="FOLDER",
                   help="unlabelled photos to gate on as well: top-1 agreement and top-5 overlap with fp32")
    p.add_argument("--out", metavar="DIR", help="where to write the int8 package (default: PACKAGE/int8)")
    p.add_argument("--samples", type=int, default=300, metavar="N",
                   help="calibration images used at most (default: 300)")
    p.add_argument("--backend", choices=["nncf", "onnxruntime"], default="nncf",
                   help="nncf (bias correction; the 'quantize' extra) or onnxruntime (ONNX Runtime's quantizer)")
    p.add_argument("--bias-correction", choices=["fast", "full", "none"], default="fast")
    p.add_argument("--quantize-first-last", action="store_true",
                   help="quantize the first layer and the classifier too (default: keep them in float)")
    p.add_argument("--keep", action="append", default=[], metavar="NODE",
                   help="ONNX node name to keep in float (repeatable)")
    p.add_argument("--max-float-layers", type=int, metavar="N",
                   help="accuracy control: when int8 misses the gate's target on the calibration images, put "
                        "back in float up to N of the layer groups that hurt most (nncf backend; 0: off; "
                        f"default: {DEFAULT_FIXES.max_float_layers}, or 0 when calibrating on the few photos "
                        "shipped with imgclf, too few to choose layers by)")


def run(args: argparse.Namespace) -> int:
    from imgclf.package import load_package
    from imgclf.quantize.build import default_max_float_layers, describe_gate, quantize_package
    from imgclf.quantize.calibration import from_folder
    from imgclf.quantize.fixes import Fixes
    from imgclf.quantize.sources import default_calibration, default_gate, labelled_folder

    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    if args.max_float_layers is not None and args.max_float_layers < 0:
        raise UserError("--max-float-layers must be 0 or more")
    parent = load_package(args.package)
    if args.eval or args.photos:
        labelled = labelled_folder(args.eval) if args.eval else None
        photos = photo_files(args.photos) if args.photos else ()
    else:
        labelled, photos = default_gate(parent)
    calibration = (from_folder(args.calibration, args.samples) if args.calibration
                   else default_calibration(parent, args.samples))
    max_float = args.max_float_layers
    if max_float is None:
        max_float = default_max_float_layers(calibration)
        if not max_float:
            print("accuracy control off: the shipped calibration photos are too few to choose layers by "
                  "(give --calibration FOLDER with a few hundred images like the ones the model will see)",
                  file=sys.stderr)
    fixes = Fixes(bias_correction=args.bias_correction, keep_first_last=not args.quantize_first_last,
                  keep=tuple(args.keep), max_float_layers=max_float)
    done = quantize_package(parent, calibration, out=Path(args.out) if args.out else None, labelled=labelled,
                            photos=photos, backend=args.backend, fixes=fixes,
                            log=lambda line: print(line, file=sys.stderr))
    for record in done.gates:
        print(describe_gate(record))
    if not done.passed:
        print(f"{done.package.path} was written but missed its accuracy gate; it is marked so and "
              "'auto' will not serve it", file=sys.stderr)
        return 3
    print(f"wrote {done.package.path} (int8, gate passed)")
    return 0


def photo_files(folder: str) -> tuple[Path, ...]:
    from imgclf.images import image_files

    if not Path(folder).is_dir():
        raise UserError(f"--photos {folder}: not a folder")
    files = tuple(image_files(folder))
    if not files:
        raise UserError(f"--photos {folder}: no image files in it")
    return files
