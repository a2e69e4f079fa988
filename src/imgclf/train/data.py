"""Training data as tensors, for training from scratch and fine-tuning alike: splits,
normalisation, the training transform, batch iterators.

Datasets are held in memory as uint8 NCHW tensors (:class:`ImageSet`). A :class:`TensorBatches`
iterator cuts an epoch into batches (seeded shuffle, sharded across DDP ranks) and applies an
:class:`ImageTransform`: augmentation on the uint8 batch (:mod:`imgclf.train.augment`), then the
*same* normalisation as :func:`imgclf.preprocess.normalize` with the spec that goes into the model
package, so training and serving see identical inputs.

Every batch draws its randomness from a generator seeded by (seed, epoch, batch index), so any
batch of any epoch can be rebuilt exactly: a run resumed mid-epoch continues with the very batches
it would have seen.

:class:`TensorBatches` also serves feature caches (float tensors, no transform) and
:class:`LoaderBatches` wraps any torch ``DataLoader``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from imgclf.data import RawDataset, RawSplit, decode_folder, open_dataset, to_geometry
from imgclf.errors import UserError
from imgclf.preprocess import PreprocessSpec
from imgclf.train.augment import Augment, augment_batch


class Batches(Protocol):
    """What the trainer iterates. ``len`` is batches per epoch (for this process)."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, skipping the first ``start`` of them."""
        ...


@dataclass
class ImageSet:
    """One split in memory: uint8 ``(N, C, H, W)`` images, int64 labels and, for image folders,
    the file each image came from."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, n_classes: int) -> np.ndarray:
        """Images per class."""
        return np.bincount(self.labels.numpy(), minlength=n_classes)

    @classmethod
    def from_raw(cls, split: RawSplit) -> ImageSet:
        if split.images is None:
            raise ValueError("split is not decoded")
        images = torch.from_numpy(np.ascontiguousarray(split.images.transpose(0, 3, 1, 2)))
        files = list(split.files) if split.files is not None else None
        return cls(images, torch.from_numpy(split.labels.astype(np.int64)), files)


@dataclass
class TrainingData:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    classes: list[str]
    spec: PreprocessSpec
    raw: RawDataset = field(repr=False)

    @property
    def eval_split(self) -> str | None:
        """The split evaluated after every epoch: val, else test, else none."""
        return "val" if self.val is not None else "test" if self.test is not None else None

    @property
    def eval_set(self) -> ImageSet | None:
        return self.val if self.val is not None else self.test

    def describe(self) -> dict[str, Any]:
        raw = self.raw
        return {
            "name": raw.name, "format": raw.format, "path": str(raw.root), "classes": self.classes,
            "train": len(self.train), "val": len(self.val) if self.val else 0,
            "test": len(self.test) if self.test else 0, "val_from": raw.val_from,
            "eval_split": self.eval_split, "skipped": [list(s) for s in raw.skipped],
        }


def channel_stats(images: torch.Tensor, scale: float = 1 / 255) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, in ``pixel * scale`` units, rounded to 4 places."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), 4096):  # chunks: a float64 copy of 50k images would be 1.2 GB
        x = images[i:i + 4096].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    n = images.numel() / c
    mean = total / n
    std = torch.sqrt(torch.clamp(total_sq / n - mean * mean, min=1e-12))
    return (tuple(round(float(m) * scale, 4) for m in mean), tuple(round(float(s) * scale, 4) for s in std))


def load_training_data(path: str | os.PathLike[str] | None, fmt: str = "auto", *, image_size: int | None = None,
                       grayscale: bool | None = None, val_fraction: float | None = None, seed: int = 0,
                       interpolation: str = "bilinear", cache_dir: str | os.PathLike[str] | None = None,
                       workers: int | None = None, progress: bool = True, use_cache: bool = True) -> TrainingData:
    """Read any supported dataset into tensors plus the :class:`PreprocessSpec` that serves it.

    Pixels are brought to ``image_size`` (default: the dataset's own size, 32 for image folders)
    by squashing, with the same function the server uses; mean/std are the train split's.
    """
    raw = open_dataset(path, fmt, val_fraction=val_fraction, seed=seed)
    if raw.format == "folder":
        size = image_size or 32
    else:
        first = raw.splits["train"].images
        assert first is not None
        size = image_size or int(first.shape[1])
    gray = raw.grayscale if grayscale is None else grayscale
    geometry = PreprocessSpec(input_size=size, crop_pct=1.0, resize_mode="squash",
                              interpolation=interpolation, grayscale=gray,  # type: ignore[arg-type]
                              mean=(0.0,), std=(1.0,))
    if raw.format == "folder":
        decode_folder(raw, geometry, cache_dir=Path(cache_dir) if cache_dir else None,
                      workers=workers, progress=progress, use_cache=use_cache)
    else:
        for split in raw.splits.values():
            assert split.images is not None
            split.images = to_geometry(split.images, geometry)
    sets = {name: ImageSet.from_raw(split) for name, split in raw.splits.items()}
    mean, std = channel_stats(sets["train"].images)
    spec = PreprocessSpec(input_size=size, crop_pct=1.0, resize_mode="squash", interpolation=interpolation,  # type: ignore[arg-type]
                          mean=mean, std=std, grayscale=gray)
    return TrainingData(sets["train"], sets.get("val"), sets.get("test"), list(raw.classes), spec, raw)


# ---------------------------------------------------------------------------------------------
# normalisation and the training transform
# ---------------------------------------------------------------------------------------------


class SpecNormalize:
    """uint8 or float ``(B, C, H, W)`` -> float32 ``(x * scale - mean) / std``: the arithmetic of
    :func:`imgclf.preprocess.normalize` (times a float32 reciprocal), channels reversed first for a
    BGR spec. Always returns a new tensor."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.scale = spec.scale
        self.bgr = spec.channel_order == "BGR" and not spec.grayscale
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = (1.0 / torch.tensor(spec.std, dtype=torch.float32)).view(1, -1, 1, 1)

    def to(self, device: torch.device | str) -> SpecNormalize:
        self.mean, self.inv_std = self.mean.to(device), self.inv_std.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flip(1).to(torch.float32) if self.bgr else x.to(torch.float32, copy=True)
        return x.mul_(self.scale).sub_(self.mean).mul_(self.inv_std)


class ImageTransform:
    """uint8 RGB batch -> (augment) -> float32 ``(x * scale - mean) / std`` in the spec's channel
    order, as in :func:`imgclf.preprocess.normalize`; without augmentation exactly what the server
    computes for the same pixels.

    Called as the batches' transform ``(x, index, epoch, generator)``: the generator is seeded per
    batch, so any batch can be rebuilt on resume. ``flip_bits``: for ``alternating`` flips, a fixed
    random bit per dataset image (seeded).
    """

    def __init__(self, spec: PreprocessSpec, augment: Augment | None = None, *, num_images: int = 0,
                 seed: int = 0) -> None:
        self.spec = spec
        self.augment = augment if augment is not None and augment.active else None
        self.normalize = SpecNormalize(spec)
        self.fill = torch.tensor([min(255, max(0, round(m / spec.scale))) for m in spec.mean], dtype=torch.uint8)
        self.flip_bits: torch.Tensor | None = None
        if self.augment is not None and self.augment.flip == "alternating":
            self.flip_bits = torch.rand(num_images, generator=torch.Generator().manual_seed(seed + 7)) < 0.5

    def to(self, device: torch.device | str) -> ImageTransform:
        self.normalize.to(device)
        return self

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None, epoch: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augment is not None:
            if generator is None:
                generator = torch.Generator().manual_seed(epoch)
            flip_mask = None
            if self.flip_bits is not None:
                if index is None:
                    raise ValueError("alternating flips need the images' dataset indices")
                flip_mask = self.flip_bits[index.cpu()] ^ bool(epoch % 2)
            x = augment_batch(x, self.augment, generator, flip_mask=flip_mask, fill=self.fill)
        # Memory layout is left as it comes (the trainer picks channels-last or not).
        return self.normalize(x)


def normalize_tensor(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Normalise uint8 NCHW images without augmentation (e.g. for the whitening init)."""
    return SpecNormalize(spec).to(x.device)(x)


# ---------------------------------------------------------------------------------------------
# batch iterators
# ---------------------------------------------------------------------------------------------


def _batch_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**62)


class TensorBatches:
    """Batches over in-memory tensors: uint8 images with an :class:`ImageTransform`, or features.

    ``batch_size`` is the global batch: under DDP (:meth:`shard`) each of ``world`` processes gets
    ``batch_size // world`` examples of every global batch, so the optimisation is the same as in
    one process. Shuffling is a seeded permutation per epoch, identical on every rank.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0,
                 transform: Callable[[torch.Tensor, torch.Tensor, int, torch.Generator], torch.Tensor] | None = None) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        if batch_size < 1:
            raise UserError("the batch size must be at least 1")
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.transform = transform
        self.rank, self.world = 0, 1
        if drop_last and len(inputs) < batch_size:
            raise UserError(f"the batch size ({batch_size}) is larger than the training set ({len(inputs)} examples)")

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def shard(self, rank: int, world: int) -> TensorBatches:
        if self.drop_last and self.batch_size % world:
            raise UserError(f"the batch size ({self.batch_size}) must be divisible by the number of processes ({world})")
        self.rank, self.world = rank, world
        return self

    def to(self, device: torch.device | str) -> TensorBatches:
        self.inputs, self.labels = self.inputs.to(device), self.labels.to(device)
        if hasattr(self.transform, "to"):
            self.transform.to(device)  # type: ignore[union-attr]
        return self

    def __len__(self) -> int:
        n = self.num_samples
        if self.drop_last:
            return n // self.batch_size
        if self.world > 1:
            n = len(range(self.rank, n, self.world))
            return -(-n // max(1, self.batch_size // self.world))
        return -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        n = self.num_samples
        if self.shuffle:
            return torch.randperm(n, generator=torch.Generator().manual_seed(_batch_seed(self.seed, epoch, -1)))
        return torch.arange(n)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(epoch)
        b = self.batch_size
        if self.drop_last:
            steps = len(order) // b
            local = b // self.world
            groups = order[: steps * b].view(steps, b)[:, self.rank * local:(self.rank + 1) * local]
            chunks: Iterable[torch.Tensor] = groups.unbind(0)
        else:
            if self.world > 1:
                order, b = order[self.rank::self.world], max(1, b // self.world)
            chunks = order.split(b)
        dev = self.labels.device
        for i, idx in enumerate(chunks):
            if i < start:
                continue
            idx_dev = idx.to(dev)
            x = self.inputs[idx_dev]
            if self.transform is not None:
                gen = torch.Generator().manual_seed(_batch_seed(self.seed, epoch, i))
                x = self.transform(x, idx, epoch, gen)
            yield x, self.labels[idx_dev]


class LoaderBatches:
    """Adapter for any iterable of ``(inputs, labels)`` batches, e.g. a torch ``DataLoader``.

    Calls ``sampler.set_epoch`` when the loader has one (DistributedSampler); resuming mid-epoch
    re-reads and skips the batches already done.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for i, (x, y) in enumerate(self.loader):
            if i >= start:
                yield x, y


def image_batches(images: ImageSet, spec: PreprocessSpec, *, batch_size: int, train: bool,
                  augment: Augment | None = None, seed: int = 0) -> TensorBatches:
    """The usual pairing: shuffled, augmented, drop-last batches for training; plain ones for evaluation."""
    transform = ImageTransform(spec, augment if train else None, num_images=len(images), seed=seed)
    return TensorBatches(images.images, images.labels, batch_size=batch_size, shuffle=train,
                         drop_last=train and len(images) >= batch_size, seed=seed, transform=transform)
