"""Dataset readers: CIFAR-10 python format, IDX (Fashion-MNIST, MNIST), image folders.

This module is numpy-only (no torch), so ``imgclf evaluate`` on a model package stays torch-free
and decode worker processes start quickly. A reader returns a :class:`RawDataset`: class names and
up to three splits (train / val / test), each either decoded uint8 arrays ``(N, H, W, C)`` or, for
image folders, a list of files that :func:`decode_folder` turns into arrays through the one decode
path (:func:`imgclf.images.decode`) and the one geometric transform
(:func:`imgclf.preprocess.resize_and_crop`), the same two steps the server applies.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from imgclf.cache import cache_home
from imgclf.errors import UserError
from imgclf.images import ImageDecodeError, decode, image_files
from imgclf.preprocess import PreprocessSpec, resize_and_crop

FORMATS = ("auto", "cifar10", "folder", "idx", "fashion-mnist", "mnist")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CACHE_VERSION = 1


@dataclass
class RawSplit:
    """One split: integer labels plus decoded ``(N, H, W, C)`` uint8 images and/or source files."""

    labels: np.ndarray
    images: np.ndarray | None = None
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> RawSplit:
        return RawSplit(
            labels=self.labels[idx],
            images=None if self.images is None else self.images[idx],
            files=None if self.files is None else [self.files[i] for i in idx],
        )


@dataclass
class RawDataset:
    name: str
    format: str
    root: Path
    classes: list[str]
    splits: dict[str, RawSplit]
    grayscale: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    val_from: str | None = None  # how the val split was made, for the record

    def split(self, name: str) -> RawSplit | None:
        return self.splits.get(name)


# ---------------------------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------------------------


def _idx_files(root: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stem in (("train_images", "train-images-idx3-ubyte"), ("train_labels", "train-labels-idx1-ubyte"),
                      ("test_images", "t10k-images-idx3-ubyte"), ("test_labels", "t10k-labels-idx1-ubyte")):
        for cand in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
            if cand.is_file():
                found[key] = cand
                break
    return found if {"train_images", "train_labels"} <= found.keys() else None


def _cifar_dir(root: Path) -> Path | None:
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


def detect_format(path: Path) -> str:
    """``cifar10``, ``idx`` or ``folder``, from what is on disk."""
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return "cifar10"
        raise UserError(f"{path} is a file; --data takes a folder, a CIFAR-10 .tar.gz or a folder of IDX files")
    if not path.is_dir():
        raise UserError(f"no such dataset: {path}")
    if _cifar_dir(path):
        return "cifar10"
    if _idx_files(path):
        return "idx"
    return "folder"


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python format
# ---------------------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; only let them rebuild numpy arrays, nothing executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle(data: bytes, what: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{what} is not a CIFAR-10 python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} is not a CIFAR-10 python batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(d: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{what} lacks 'data'/'labels': {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{what} holds data {data.shape} and {len(labels)} labels; expected (N, 3072) and N")
    # Rows are the R, G and B planes of a 32x32 image, one after another.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def read_cifar10(path: Path) -> RawDataset:
    """The official python version: a folder of ``data_batch_1..5``/``test_batch``/``batches.meta``
    (or its parent holding ``cifar-10-batches-py``), or the ``cifar-10-python.tar.gz`` itself."""
    blobs: dict[str, bytes] = {}
    wanted = set(CIFAR10_TRAIN_BATCHES) | {"test_batch", "batches.meta"}
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
    else:
        root = _cifar_dir(path)
        if root is None:
            raise UserError(f"{path} has no data_batch_1 or test_batch (CIFAR-10 python format)")
        for name in wanted:
            if (root / name).is_file():
                blobs[name] = (root / name).read_bytes()
    train_names = [n for n in CIFAR10_TRAIN_BATCHES if n in blobs]
    if not train_names:
        raise UserError(f"{path} has no CIFAR-10 training batches (data_batch_1..5)")
    if "batches.meta" in blobs:
        meta = _unpickle(blobs["batches.meta"], "batches.meta")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    else:
        classes = []
    parts = [_cifar_batch(_unpickle(blobs[n], n), n) for n in train_names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    splits = {"train": RawSplit(labels, images)}
    if "test_batch" in blobs:
        ti, tl = _cifar_batch(_unpickle(blobs["test_batch"], "test_batch"), "test_batch")
        splits["test"] = RawSplit(tl, ti)
    n_classes = int(max(int(s.labels.max()) for s in splits.values())) + 1
    if not classes:
        classes = [str(i) for i in range(n_classes)]
    if n_classes > len(classes):
        raise UserError(f"labels go up to {n_classes - 1} but batches.meta names {len(classes)} classes")
    return RawDataset("cifar10", "cifar10", path, classes, splits)


# ---------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# ---------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
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
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise UserError(f"{path}: header says {dims} = {count} bytes but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx_dataset(path: Path, fmt: str = "idx") -> RawDataset:
    files = _idx_files(path)
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
    n_classes = int(max(int(s.labels.max()) for s in splits.values())) + 1
    fashion = fmt == "fashion-mnist" or (fmt == "idx" and "fashion" in str(path.resolve()).lower())
    if fashion and n_classes <= len(FASHION_MNIST_CLASSES):
        classes, name = list(FASHION_MNIST_CLASSES), "fashion-mnist"
    else:
        classes, name = [str(i) for i in range(n_classes)], ("mnist" if fmt == "mnist" else path.name or "idx")
    return RawDataset(name, "idx", path, classes, splits, grayscale=True)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_folder(path: Path) -> RawDataset:
    """Find the layout: ``train/<class>`` with ``test/<class>`` and/or ``val/<class>``, or one level
    of class folders (split into train/val later by :func:`split_off_val`)."""
    if not path.is_dir():
        raise UserError(f"no such folder: {path}")
    split_dirs = {name: path / name for name in ("train", "val", "test") if (path / name).is_dir()}
    if "train" in split_dirs:
        classes = [d.name for d in _class_dirs(split_dirs["train"])]
        layout = {name: d for name, d in split_dirs.items()}
    else:
        classes = [d.name for d in _class_dirs(path)]
        layout = {"train": path}
    if not classes:
        raise UserError(f"{path} has no class folders (expected {path}/<class>/*.jpg or {path}/train/<class>/...)")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, RawSplit] = {}
    for name, root in layout.items():
        files: list[Path] = []
        labels: list[int] = []
        for d in _class_dirs(root):
            if d.name not in index:
                raise UserError(f"class folder {name}/{d.name} has no counterpart in train/ (classes: {', '.join(classes)})")
            found = image_files(d)
            files += found
            labels += [index[d.name]] * len(found)
        if not files and name == "train":
            raise UserError(f"no image files under {root}")
        if files:
            splits[name] = RawSplit(np.asarray(labels, dtype=np.int64), files=files)
    return RawDataset(path.name or "images", "folder", path, classes, splits)


def _decode_chunk(args: tuple[list[str], dict]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Worker: decode + resize a list of files. Returns stacked arrays and (position, reason) failures."""
    paths, spec_dict = args
    spec = PreprocessSpec.from_dict(spec_dict)
    out = np.zeros((len(paths), spec.input_size, spec.input_size, spec.channels), np.uint8)
    failed: list[tuple[int, str]] = []
    for i, p in enumerate(paths):
        try:
            out[i] = resize_and_crop(decode(Path(p).read_bytes()), spec)
        except (ImageDecodeError, OSError) as exc:
            failed.append((i, str(exc) or type(exc).__name__))
    return out, failed


def _geometry(spec: PreprocessSpec) -> dict:
    """The spec fields that decide the decoded pixels (mean/std do not)."""
    return {"input_size": spec.input_size, "crop_pct": spec.crop_pct, "resize_mode": spec.resize_mode,
            "interpolation": spec.interpolation, "grayscale": spec.grayscale}


def hash_files(h: hashlib._Hash, files: Sequence[Path]) -> None:
    """Feed every file's path, size and modification time to hasher ``h``: a cache keyed on it
    misses when a file is added, removed, replaced or edited."""
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def cache_key(files: list[Path], spec: PreprocessSpec) -> str:
    """Identity of a decoded folder: every file's path, size and mtime, plus the geometry."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "geometry": _geometry(spec)}, sort_keys=True).encode())
    hash_files(h, files)
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    return cache_home("datasets")


def decode_files(files: list[Path], spec: PreprocessSpec, *, workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``files`` to ``(N, S, S, C)`` uint8 (failed entries left black) and list the failures.

    Large lists are spread over a pool of processes: decoding is CPU-bound Python + PIL work.
    """
    workers = workers if workers is not None else min(len(os.sched_getaffinity(0)), 8)
    chunk = 512
    jobs = [([str(f) for f in files[i:i + chunk]], spec.to_dict()) for i in range(0, len(files), chunk)]
    out = np.zeros((len(files), spec.input_size, spec.input_size, spec.channels), np.uint8)
    failed: list[tuple[int, str]] = []

    def collect(results) -> None:  # noqa: ANN001 - iterator of worker results
        for j, (arr, bad) in enumerate(results):
            start = j * chunk
            out[start:start + len(arr)] = arr
            failed.extend((start + i, reason) for i, reason in bad)
            if progress:
                progress(len(arr))

    if workers <= 1 or len(jobs) <= 1:
        collect(map(_decode_chunk, jobs))
    else:
        # spawn: the parent may hold OpenMP threads (torch), which fork does not copy safely.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            collect(pool.map(_decode_chunk, jobs))
    return out, failed


def decode_folder(ds: RawDataset, spec: PreprocessSpec, *, cache_dir: Path | None = None,
                  workers: int | None = None, progress: bool = True, use_cache: bool = True) -> RawDataset:
    """Decode every split of a scanned folder dataset, through a cache keyed by the file list.

    Unreadable files are dropped from their split and listed in ``ds.skipped``; never fatal.
    """
    all_files = [f for s in ds.splits.values() for f in (s.files or [])]
    cache = (cache_dir or default_cache_dir()) / f"{cache_key(all_files, spec)}.npz"
    images = None
    bad: list[tuple[int, str]] = []
    if use_cache and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                images = z["images"]
                bad = [(int(i), str(r)) for i, r in zip(z["bad_index"], z["bad_reason"], strict=True)]
            if len(images) != len(all_files):
                images = None
        except (OSError, ValueError, KeyError, EOFError):
            images = None  # a damaged cache file is rebuilt
    if images is None:
        from tqdm import tqdm

        with tqdm(total=len(all_files), unit="img", desc=f"decoding {ds.name}", file=sys.stderr,
                  disable=not (progress and sys.stderr.isatty())) as bar:
            images, bad = decode_files(all_files, spec, workers=workers, progress=bar.update)
        if use_cache:
            _write_cache(cache, images, bad)
    bad_set = {i for i, _ in bad}
    root = ds.root
    ds.skipped = [(_rel(all_files[i], root), reason) for i, reason in bad]
    offset = 0
    for name, split in list(ds.splits.items()):
        n = len(split)
        keep = np.asarray([i for i in range(n) if offset + i not in bad_set], dtype=np.int64)
        decoded = RawSplit(split.labels, images[offset:offset + n], split.files)
        offset += n
        ds.splits[name] = decoded.take(keep) if len(keep) < n else decoded
        if len(ds.splits[name]) == 0:
            raise UserError(f"no readable images in the {name} split of {root}")
    ds.grayscale = spec.grayscale
    return ds


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _write_cache(cache: Path, images: np.ndarray, bad: list[tuple[int, str]]) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, bad_index=np.asarray([i for i, _ in bad], dtype=np.int64),
                     bad_reason=np.asarray([r for _, r in bad], dtype=str))
        os.replace(tmp, cache)  # atomic: concurrent readers see the old file or the whole new one
    except OSError as exc:
        print(f"imgclf: warning: could not write dataset cache {cache}: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# splits and the one entry point
# ---------------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of every class, chosen by a seeded shuffle, sorted."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(idx)))
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)  # keep at least one of each class on both sides
        else:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_mask = np.ones(len(labels), bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def split_off_val(ds: RawDataset, val_fraction: float | None, seed: int) -> RawDataset:
    """Give the dataset a val split. ``None`` means: keep a val/ folder if there is one, carve 20%
    out of train when the dataset has neither val nor test, else none (the test split is then the
    per-epoch evaluation set, as in the original CIFAR-10 experiments)."""
    if "val" in ds.splits:
        if val_fraction:
            raise UserError(f"{ds.root} has its own val split; drop --val-fraction")
        ds.val_from = "val folder"
        return ds
    if val_fraction is None:
        val_fraction = 0.0 if "test" in ds.splits else 0.2
    if val_fraction == 0:
        return ds
    tr, va = stratified_split(ds.splits["train"].labels, val_fraction, seed)
    train = ds.splits["train"]
    ds.splits["train"], ds.splits["val"] = train.take(tr), train.take(va)
    ds.val_from = f"{val_fraction:g} of train (stratified, seed {seed})"
    return ds


def open_dataset(path: str | os.PathLike[str] | None, fmt: str = "auto", *, val_fraction: float | None = None,
                 seed: int = 0) -> RawDataset:
    """Read a dataset's labels and (except image folders) its pixels; image folders come back
    scanned but not decoded (see :func:`decode_folder`). The val split is made here, on the file
    list, so training and a later ``imgclf evaluate`` agree on it whatever fails to decode."""
    if fmt not in FORMATS:
        raise UserError(f"unknown dataset format {fmt!r}; choose from {', '.join(FORMATS)}")
    if path is None:
        if fmt not in ("fashion-mnist",):
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


def to_geometry(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Arrays from CIFAR/IDX -> the spec's geometry, with the same function the server uses.
    Already-matching arrays pass through untouched (the function would be the identity)."""
    n, h, w, c = images.shape
    if h == w == spec.input_size and c == spec.channels:
        return images
    out = np.zeros((n, spec.input_size, spec.input_size, spec.channels), np.uint8)
    for i in range(n):
        out[i] = resize_and_crop(as_rgb_or_gray(images[i], spec), spec)
    return out


def as_rgb_or_gray(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """An ``(H, W, 1|3)`` array in the form :func:`resize_and_crop` takes for ``spec``."""
    if image.shape[-1] == 1:
        return image[..., 0] if spec.grayscale else np.repeat(image, 3, axis=-1)
    return image
