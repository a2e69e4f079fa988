"""Tiny datasets in the real on-disk formats, for the training tests.

Images are synthetic but learnable: each class is a distinct colour pattern with noise, so a few
steps of training move accuracy well above chance.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat"]


def class_images(n_per_class: int, *, size: int = 32, channels: int = 3, classes: int = 4,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(N, size, size, channels)`` uint8 images and int labels; class c has bright quadrant c % 4."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    half = size // 2
    for c in range(classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 90, (size, size, channels), dtype=np.int64)
            r, q = divmod(c % 4, 2)
            img[r * half:(r + 1) * half, q * half:(q + 1) * half, :] += 150
            if channels == 3:
                img[..., c % 3] += 15
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    order = rng.permutation(len(labels))
    return np.stack(images)[order], np.asarray(labels, dtype=np.int64)[order]


def _batch_bytes(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    # The official layout: a dict with bytes keys, 'data' (N, 3072) uint8 of R, G, B planes, 'labels' list.
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    return pickle.dumps(batch, protocol=2)


def write_cifar10(root: Path, *, n_train_per_class: int = 10, n_test_per_class: int = 5,
                  tar_gz: bool = False) -> Path:
    """A CIFAR-10 python-format dataset: data_batch_1..5, test_batch, batches.meta (or the .tar.gz)."""
    x, y = class_images(n_train_per_class, seed=1)
    xt, yt = class_images(n_test_per_class, seed=2)
    files = {}
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), 1):
        files[f"data_batch_{i}"] = _batch_bytes(x[part], y[part], f"training batch {i} of 5")
    files["test_batch"] = _batch_bytes(xt, yt, "testing batch 1 of 1")
    files["batches.meta"] = pickle.dumps({b"num_cases_per_batch": len(y) // 5, b"num_vis": 3072,
                                          b"label_names": [c.encode() for c in CLASSES]}, protocol=2)
    root.mkdir(parents=True, exist_ok=True)
    if tar_gz:
        path = root / "cifar-10-python.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return path
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return folder


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder(root: Path, splits: dict[str, int], *, size: int = 32, classes: int = 4,
                       seed: int = 0) -> Path:
    """``root/<split>/<class>/NNNN.png`` for each split; a split named '' writes class folders at root."""
    for k, (split, n) in enumerate(splits.items()):
        x, y = class_images(n, size=size, classes=classes, seed=seed + k)
        counters = dict.fromkeys(range(classes), 0)
        for img, label in zip(x, y, strict=True):
            d = root / split / CLASSES[label] if split else root / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{counters[label]:04d}.png").write_bytes(_png(img))
            counters[label] += 1
    return root


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def write_fashion_idx(root: Path, *, n_train_per_class: int = 6, n_test_per_class: int = 3, gz: bool = True) -> Path:
    """Fashion-MNIST-named IDX files (28x28 grayscale, 10 classes)."""
    root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    x, y = class_images(n_train_per_class, size=28, channels=1, classes=10, seed=3)
    xt, yt = class_images(n_test_per_class, size=28, channels=1, classes=10, seed=4)
    write_idx(root / f"train-images-idx3-ubyte{sfx}", x[..., 0], gz=gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", y, gz=gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", xt[..., 0], gz=gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", yt, gz=gz)
    return root
