"""CIFAR-10, python format: the official ``cifar-10-python.tar.gz``, its ``cifar-10-batches-py``
folder or that folder's parent.

The batches are pickles; a restricted unpickler lets them rebuild numpy arrays and nothing else,
so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.dataset import Labels, Pixels, RawDataset, RawSplit
from imgclf.errors import UserError

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


class _CifarUnpickler(pickle.Unpickler):
    """Only lets a CIFAR batch rebuild numpy arrays, nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> Any:  # noqa: ANN401 - the pickle API's type
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def batches_dir(root: Path) -> Path | None:
    """The folder holding ``data_batch_1``/``test_batch``: ``root`` or its ``cifar-10-batches-py``."""
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


def _unpickle(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{what} is not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} is not a CIFAR-10 python batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _batch(d: dict[str, Any], what: str) -> tuple[Pixels, Labels]:
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{what} lacks 'data'/'labels': {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{what} holds data {data.shape} and {len(labels)} labels; expected (N, 3072) and N")
    # Rows are the R, G and B planes of a 32x32 image, one after another.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _blobs(path: Path, wanted: set[str]) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    if path.is_file():
        try:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        f = tar.extractfile(member)
                        if f is not None:
                            blobs[base] = f.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"cannot read {path} as a CIFAR-10 archive: {exc}") from None
        return blobs
    root = batches_dir(path)
    if root is None:
        raise UserError(f"{path} has no data_batch_1 or test_batch (CIFAR-10 python format)")
    for name in wanted:
        if (root / name).is_file():
            blobs[name] = (root / name).read_bytes()
    return blobs


def read_cifar10(path: Path) -> RawDataset:
    """The official python version: a folder of ``data_batch_1..5``/``test_batch``/``batches.meta``
    (or its parent holding ``cifar-10-batches-py``), or the ``cifar-10-python.tar.gz`` itself."""
    blobs = _blobs(path, set(TRAIN_BATCHES) | {"test_batch", "batches.meta"})
    train_names = [n for n in TRAIN_BATCHES if n in blobs]
    if not train_names:
        raise UserError(f"{path} has no CIFAR-10 training batches (data_batch_1..5)")
    classes: list[str] = []
    if "batches.meta" in blobs:
        meta = _unpickle(blobs["batches.meta"], "batches.meta")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    parts = [_batch(_unpickle(blobs[n], n), n) for n in train_names]
    splits = {"train": RawSplit(np.concatenate([p[1] for p in parts]), np.concatenate([p[0] for p in parts]))}
    if "test_batch" in blobs:
        ti, tl = _batch(_unpickle(blobs["test_batch"], "test_batch"), "test_batch")
        splits["test"] = RawSplit(tl, ti)
    n_classes = max(int(s.labels.max()) for s in splits.values()) + 1
    if not classes:
        classes = [str(i) for i in range(n_classes)]
    if n_classes > len(classes):
        raise UserError(f"labels go up to {n_classes - 1} but batches.meta names {len(classes)} classes")
    return RawDataset("cifar10", "cifar10", path, classes, splits)
