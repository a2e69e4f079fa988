"""The calibration set: which images set the int8 ranges, loaded through the serving path, and
the manifest that records them in the int8 package's provenance.

Three sources: a folder the user names (``--calibration``), a trained or fine-tuned package's own
validation split (its provenance says where its data was), or the real photos that ship with
imgclf (:mod:`imgclf.quantize.photos`) for a zoo export. A calibration set is exactly what its
manifest says: an unreadable file is an error, not a silent gap.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.data.dataset import RawDataset, RawSplit, as_rgb_or_gray
from imgclf.errors import UserError
from imgclf.images import ImageDecodeError, decode, image_files
from imgclf.package import sha256_file
from imgclf.pipeline import prepare
from imgclf.preprocess import PreprocessSpec, decode_min_side, normalize, preprocess, resize_and_crop

DEFAULT_SAMPLES = 300
BUNDLED_VIEWS = 16  # the whole photo and 15 crops of each shipped photo
BUNDLED_SOURCE = "bundled photos"


class CalibrationError(UserError, ValueError):
    """The calibration images are missing, empty or unreadable."""


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images: files (a folder, bundled photos, a folder dataset's split) or decoded
    arrays (a CIFAR/IDX split), with where they came from."""

    source: str  # "folder", "bundled photos" or "validation split"
    description: str  # for messages and the record: the folder, or dataset + split
    files: tuple[Path, ...] = ()
    root: Path | None = None
    images: npt.NDArray[np.uint8] | None = field(default=None, compare=False)  # (N, H, W, C)
    views: int = 1  # crops per file: a handful of photos gives ranges too narrow for the photos to come
    labels: tuple[str, ...] | None = None  # class name per image, for a dataset's split

    def count(self) -> int:
        """Calibration inputs: images times views."""
        return len(self) * self.views

    def __len__(self) -> int:
        return len(self.files) if self.images is None else len(self.images)

    def manifest(self) -> dict[str, Any]:
        """What the int8 package records: source, count, a hash of the whole set and, for files,
        each file's path (relative to the set's root) and sha256."""
        h = hashlib.sha256()
        entries: list[dict[str, str]] = []
        if self.images is not None:
            h.update(np.ascontiguousarray(self.images).tobytes())
        for f in self.files:
            digest = sha256_file(f)
            name = str(f.relative_to(self.root)) if self.root is not None and f.is_relative_to(self.root) else f.name
            entries.append({"path": name, "sha256": digest})
            h.update(f"{name}\0{digest}\n".encode())
        out: dict[str, Any] = {"source": self.source, "data": self.description, "count": len(self),
                               "sha256": h.hexdigest()}
        if self.views > 1:
            out["views_per_image"] = self.views
        if entries:
            out["files"] = entries
        return out

    def inputs(self, spec: PreprocessSpec, *, workers: int = 2) -> npt.NDArray[np.float32]:
        """``(N, C, S, S)`` model inputs through the serving path (decode, then ``spec``)."""
        if self.images is not None:
            return np.stack([preprocess(as_rgb_or_gray(img, spec), spec) for img in self.images])

        def load(path: Path) -> list[npt.NDArray[np.float32]]:
            try:
                if self.views == 1:
                    return [prepare(path.read_bytes(), spec)]
                image = decode(path.read_bytes(), min_side=decode_min_side(spec))
            except (ImageDecodeError, OSError) as exc:
                raise CalibrationError(f"calibration image {path} cannot be read: {exc}") from None
            return [normalize(resize_and_crop(view, spec), spec) for view in crops(image, self.views)]

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return np.stack([x for views in pool.map(load, self.files) for x in views])


def crops(image: npt.NDArray[np.uint8], n: int) -> list[npt.NDArray[np.uint8]]:
    """``n`` views of one photo: the whole photo, then square crops of 80%, 60% and 45% of its
    shorter side at the centre and the four corners, every other one mirrored."""
    h, w = image.shape[:2]
    views = [image]
    for frac in (0.8, 0.6, 0.45):
        side = max(8, int(min(h, w) * frac))
        for y, x in ((h - side) // 2, (w - side) // 2), (0, 0), (0, w - side), (h - side, 0), (h - side, w - side):
            crop = image[y:y + side, x:x + side]
            views.append(crop[:, ::-1] if len(views) % 2 else crop)
    return [np.ascontiguousarray(v) for v in views[:n]]


def sample(items: Sequence[Path], n: int, seed: int = 0) -> list[Path]:
    """At most ``n`` of ``items``: a seeded random choice, kept in listing order so the manifest
    reads naturally."""
    if len(items) <= n:
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def from_folder(folder: str | Path, samples: int = DEFAULT_SAMPLES) -> CalibrationSet:
    """Every image file under ``folder`` (class subfolders or not), at most ``samples`` of them."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {root} does not exist or is not a folder")
    files = image_files(root)
    if not files:
        raise CalibrationError(f"calibration folder {root} has no image files (.jpg, .png, ...)")
    return CalibrationSet("folder", str(root), tuple(sample(files, samples)), root=root)


def from_split(dataset: RawDataset, split: str, samples: int = DEFAULT_SAMPLES) -> CalibrationSet:
    """At most ``samples`` images of one split of a dataset."""
    data: RawSplit | None = dataset.split(split)
    if data is None or not len(data):
        raise CalibrationError(f"{dataset.root} has no {split} split to calibrate on")
    description = f"{dataset.name} ({split} split, {dataset.root})"
    # The same seeded choice as sample(): the files and their labels stay paired.
    idx = np.asarray(sorted(random.Random(0).sample(range(len(data)), min(samples, len(data)))), np.int64)
    chosen = data.take(idx)
    labels = tuple(dataset.classes[int(t)] for t in chosen.labels)
    if chosen.files is not None:
        return CalibrationSet(f"{split} split", description, tuple(chosen.files), root=dataset.root, labels=labels)
    assert chosen.images is not None  # a split holds files or decoded images
    return CalibrationSet(f"{split} split", description, images=chosen.images, labels=labels)


def bundled() -> CalibrationSet:
    """The real photos that ship with imgclf (see :mod:`imgclf.quantize.photos`), 16 views each."""
    from imgclf.quantize.photos import CALIBRATION, photos_dir

    root = photos_dir()
    return CalibrationSet(BUNDLED_SOURCE, "photos shipped with imgclf",
                          tuple(root / name for name in CALIBRATION), root=root, views=BUNDLED_VIEWS)
