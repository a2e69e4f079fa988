"""Where a package's calibration and gate images come from when the user names none.

A trained or fine-tuned package records its dataset (path, format and how its validation split
was made); it calibrates on that validation split (else its training split) and is gated on its
test split (else validation). Calibration and gate never share images: ranges fitted to the very
images they are then judged on would flatter the int8 model. A zoo export (dataset
``imagenet-1k``, no path) calibrates on the photos shipped with imgclf and is gated on the shipped
photos held out from calibration.
"""

from __future__ import annotations

import re
from pathlib import Path

from imgclf.data.dataset import RawDataset
from imgclf.errors import UserError
from imgclf.evaluation.gate import LabelledSplit
from imgclf.package import ModelPackage
from imgclf.quantize.calibration import DEFAULT_SAMPLES, CalibrationError, CalibrationSet, bundled, from_split

_CARVED = re.compile(r"^([0-9.]+) of train \(stratified, seed (\d+)\)")


def package_dataset(package: ModelPackage) -> RawDataset | None:
    """The dataset the package was trained on, with its validation split made as in training;
    ``None`` when the provenance names no dataset on disk (zoo exports, imports)."""
    from imgclf.data import open_dataset

    record = package.meta.provenance.dataset
    if record is None or not record.path:
        return None
    if not Path(record.path).exists():
        raise CalibrationError(f"the data {package.name} was trained on ({record.path}) is not there any more; "
                               "pass --calibration FOLDER (and --eval FOLDER)")
    fraction, seed = None, 0
    carved = _CARVED.match(record.val_from or "")
    if carved:
        fraction, seed = float(carved.group(1)), int(carved.group(2))
    fmt = record.format if record.format in ("cifar10", "folder", "idx", "fashion-mnist", "mnist") else "auto"
    return open_dataset(record.path, fmt or "auto", val_fraction=fraction, seed=seed)


def labelled_folder(folder: str | Path) -> LabelledSplit:
    """``--eval FOLDER``: its test split, else val, else its class folders as they are."""
    from imgclf.data import open_dataset

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--eval {root}: not a folder of class subfolders")
    ds = open_dataset(root, "folder", val_fraction=0.0)
    split = next(s for s in ("test", "val", "train") if s in ds.splits)
    return LabelledSplit(ds, split)


def default_calibration(package: ModelPackage, samples: int = DEFAULT_SAMPLES) -> CalibrationSet:
    """The calibration set of ``package`` when the user names none."""
    dataset = package_dataset(package)
    if dataset is None:
        if package.meta.provenance.task != "export":
            raise CalibrationError(f"{package.name} records no dataset to calibrate on; pass --calibration FOLDER "
                                   "(a few hundred images like the ones it will classify)")
        return bundled()
    return from_split(dataset, _calibration_split(dataset), samples)


def default_gate(package: ModelPackage) -> tuple[LabelledSplit | None, tuple[Path, ...]]:
    """The labelled split or unlabelled photos ``package`` is gated on when the user names none."""
    from imgclf.quantize.photos import GATE, photos_dir

    dataset = package_dataset(package)
    if dataset is None:
        if package.meta.provenance.task != "export":
            raise UserError(f"{package.name} records no dataset to gate on; pass --eval FOLDER (labelled) "
                            "or --photos FOLDER")
        return None, tuple(photos_dir() / name for name in GATE)
    cal_split = _calibration_split(dataset)
    gate_split = next((s for s in ("test", "val") if s in dataset.splits and s != cal_split), None)
    if gate_split is None:
        raise UserError(f"{dataset.root} has no split left to gate on besides the calibration split; "
                        "pass --eval FOLDER")
    return LabelledSplit(dataset, gate_split), ()


def _calibration_split(dataset: RawDataset) -> str:
    return "val" if "val" in dataset.splits else "train"
