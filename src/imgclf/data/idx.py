"""IDX files: MNIST and Fashion-MNIST (``train-images-idx3-ubyte[.gz]`` and friends)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imgclf.data.dataset import RawDataset, RawSplit
from imgclf.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_STEMS = (("train_images", "train-images-idx3-ubyte"), ("train_labels", "train-labels-idx1-ubyte"),
          ("test_images", "t10k-images-idx3-ubyte"), ("test_labels", "t10k-labels-idx1-ubyte"))


def idx_files(root: Path) -> dict[str, Path] | None:
    """The IDX files of a folder by role (``train_images``, ...), or None without a train pair."""
    found: dict[str, Path] = {}
    for key, stem in _STEMS:
        for cand in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
            if cand.is_file():
                found[key] = cand
                break
    return found if {"train_images", "train_labels"} <= found.keys() else None


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """One IDX file (optionally gzipped) as a numpy array. Only unsigned-byte data is used here."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path} is a damaged gzip file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise UserError(f"{path}: IDX type 0x{dtype_code:02x} is not supported (unsigned bytes only)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: the IDX header is cut short")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise UserError(f"{path}: header says {dims} = {count} bytes but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx_dataset(path: Path, fmt: str = "idx") -> RawDataset:
    """A folder of IDX files as a dataset; Fashion-MNIST (by ``fmt`` or a path naming it) gets its class names."""
    files = idx_files(path)
    if files is None:
        raise UserError(f"{path} has no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")

    def pair(images_key: str, labels_key: str) -> RawSplit:
        images, labels = read_idx(files[images_key]), read_idx(files[labels_key]).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{files[images_key].name} {images.shape} and {files[labels_key].name} "
                            f"{labels.shape} do not pair up as images and labels")
        return RawSplit(labels, images[..., None])

    splits = {"train": pair("train_images", "train_labels")}
    if {"test_images", "test_labels"} <= files.keys():
        splits["test"] = pair("test_images", "test_labels")
    n_classes = max(int(s.labels.max()) for s in splits.values()) + 1
    fashion = fmt == "fashion-mnist" or (fmt == "idx" and "fashion" in str(path.resolve()).lower())
    if fashion and n_classes <= len(FASHION_MNIST_CLASSES):
        classes, name = list(FASHION_MNIST_CLASSES), "fashion-mnist"
    else:
        classes, name = [str(i) for i in range(n_classes)], ("mnist" if fmt == "mnist" else path.name or "idx")
    return RawDataset(name, "idx", path, classes, splits, grayscale=True)
