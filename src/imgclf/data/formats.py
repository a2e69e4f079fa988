"""Which reader a path needs, and the one entry point that opens any supported dataset."""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.data.cifar import batches_dir, read_cifar10
from imgclf.data.dataset import RawDataset
from imgclf.data.folder import scan_folder
from imgclf.data.idx import FASHION_MNIST_DIR, idx_files, read_idx_dataset
from imgclf.data.splits import split_off_val
from imgclf.errors import UserError

FORMATS = ("auto", "cifar10", "folder", "idx", "fashion-mnist", "mnist")


def detect_format(path: Path) -> str:
    """``cifar10``, ``idx`` or ``folder``, from what is on disk."""
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return "cifar10"
        raise UserError(f"{path} is a file; --data takes a folder, a CIFAR-10 .tar.gz or a folder of IDX files")
    if not path.is_dir():
        raise UserError(f"no such dataset: {path}")
    if batches_dir(path):
        return "cifar10"
    if idx_files(path):
        return "idx"
    return "folder"


def open_dataset(path: str | os.PathLike[str] | None, fmt: str = "auto", *, val_fraction: float | None = None,
                 seed: int = 0) -> RawDataset:
    """Read a dataset's labels and (except image folders) its pixels; image folders come back
    scanned but not decoded (see :func:`imgclf.data.decode.decode_folder`). The val split is made
    here, on the file list, so training and a later ``imgclf evaluate`` agree on it whatever fails
    to decode."""
    if fmt not in FORMATS:
        raise UserError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    if path is None:
        if fmt != "fashion-mnist":
            raise UserError("--data is required (only --format fashion-mnist has a default location)")
        path = FASHION_MNIST_DIR
        if not path.is_dir():
            raise UserError(f"Fashion-MNIST not found at {path}; install the Debian package "
                            "dataset-fashion-mnist or pass --data")
    p = Path(path).expanduser()
    kind = detect_format(p) if fmt == "auto" else fmt
    if kind == "cifar10":
        ds = read_cifar10(p)
    elif kind in ("idx", "fashion-mnist", "mnist"):
        ds = read_idx_dataset(p, kind)
    else:
        ds = scan_folder(p)
    return split_off_val(ds, val_fraction, seed)
