from __future__ import annotations

import argparse
import json
from typing import Any

NAME = "models"
HELP = "list the model zoo: parameters, input size, whether weights are here and which weight files each takes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one model: its preprocessing and every weight file it takes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def weight_files(entry: Any) -> list[dict[str, Any]]:
    """Every weights file ``entry`` takes: its default (shipped in a package or at its URL), then
    the Keras-applications files, each with the preprocessing that goes with it."""
    from imgclf.zoo.keras import KerasLayout
    from imgclf.zoo.weights import availability

    out: list[dict[str, Any]] = []
    src = entry.weights
    keras_default = bool(src and src.filename.lower().endswith((".h5", ".hdf5")))
    if src is not None:
        out.append({
            "filename": src.filename, "format": "keras" if keras_default else "torch", "default": True,
            "include_top": True, "url": src.url, "sha256": src.sha256, "package": src.package,
            "availability": availability(entry), "preprocess": entry.preprocess.to_dict(),
        })
    layout = entry.extra.get("keras")
    if isinstance(layout, KerasLayout):
        for f in layout.files:
            if src is not None and f.filename == src.filename:
                continue
            out.append({
                "filename": f.filename, "format": "keras", "default": False, "include_top": f.include_top,
                "url": f.url, "sha256": None, "package": None, "availability": None,
                "preprocess": layout.spec_for(f.filename).to_dict(),
            })
    return out


def rows() -> list[dict[str, Any]]:
    from imgclf.zoo import DEFAULT_MODEL, entries
    from imgclf.zoo.keras import KerasLayout
    from imgclf.zoo.weights import availability

    out = []
    for e in entries():
        spec = e.preprocess
        out.append({
            "name": e.name,
            "family": e.family,
            "params": e.num_params,
            "input_size": spec.input_size,
            "preprocess": spec.to_dict(),
            "weights": availability(e),
            "weights_url": e.weights.url if e.weights else None,
            "keras_h5": isinstance(e.extra.get("keras"), KerasLayout),
            "weight_files": weight_files(e),
            "default": e.name == DEFAULT_MODEL,
            "description": e.description,
        })
    return out


def describe_spec(spec: dict) -> str:
    size = spec["input_size"]
    if spec["resize_mode"] == "squash":
        geometry = f"{size} px squash resize ({spec['interpolation']})"
    else:
        resize = int(size / spec["crop_pct"] + 1e-6)
        geometry = f"{size} px: shorter side {resize}, centre crop ({spec['interpolation']})"
    if spec["channel_order"] == "BGR" and spec["scale"] == 1.0:
        values = "caffe: BGR, 0..255 minus the ImageNet means"
    elif spec["scale"] == 1.0 and all(m == 127.5 for m in spec["mean"]):
        values = "scaled to [-1, 1]"
    elif all(abs(m - 0.5) < 1e-9 for m in spec["mean"]) and all(abs(s - 0.5) < 1e-9 for s in spec["std"]):
        values = "scaled to [-1, 1]"
    else:
        values = "ImageNet mean/std" if abs(spec["mean"][0] - 0.485) < 1e-9 else f"mean {spec['mean']} std {spec['std']}"
    return f"{geometry}; {values}"


def _detail(row: dict) -> None:
    star = " (default model)" if row["default"] else ""
    print(f"{row['name']}{star}: {row['description']}")
    print(f"  family {row['family']}, {row['params']:,} parameters; preprocessing: {describe_spec(row['preprocess'])}")
    print("weight files it takes (imgclf predict/export/serve --model NAME --weights FILE):")
    for f in row["weight_files"]:
        tags = ["default" if f["default"] else "", "Keras" if f["format"] == "keras" else "torch",
                "classifier" if f["include_top"] else "no classifier: features only, include_top=False"]
        state = f"  [{f['availability']}]" if f["availability"] else ""
        print(f"  {f['filename']}  ({', '.join(t for t in tags if t)}){state}")
        if f["package"]:
            print(f"      shipped in the Python package {f['package'].replace('_', '-')}")
        if f["url"]:
            print(f"      {f['url']}")
        if f["preprocess"] != row["preprocess"]:
            print(f"      preprocessing: {describe_spec(f['preprocess'])}")
    torch_files = ".pth/.pt/.safetensors state dicts in this model's layout"
    keras = ", Keras-applications .h5 files of the same architecture" if row["keras_h5"] else ""
    print(f"  and any {torch_files}{keras}")


def run(args: argparse.Namespace) -> int:
    data = rows()
    if args.name:
        from imgclf.zoo import get

        get(args.name)  # an unknown name: KeyError with the known names
        data = [r for r in data if r["name"] == args.name]
        if args.json:
            print(json.dumps(data[0], indent=2))
        else:
            _detail(data[0])
        return 0
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{'name':<20} {'params':>13} {'input':>6}  {'weights':<20} also takes")
    for r in data:
        star = " (default)" if r["default"] else ""
        also = "Keras .h5" if r["keras_h5"] else ""
        print(f"{r['name']:<20} {r['params']:>13,} {r['input_size']:>6}  {r['weights'] + star:<20} {also}".rstrip())
    print("\n`imgclf models NAME` lists the weight files a model takes, with their URLs and preprocessing.")
    return 0
