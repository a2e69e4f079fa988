"""Torch-free datasets: CIFAR-10 (python format), IDX (MNIST, Fashion-MNIST) and image folders.

A reader returns a :class:`RawDataset`: class names and up to three splits (train / val / test),
each either decoded uint8 arrays ``(N, H, W, C)`` or, for image folders, a list of files that
:func:`decode_folder` turns into arrays through the one decode path and a cache. Everything here
is numpy-only, so evaluating a model package and the decode worker processes never load torch.

Modules, one job each: :mod:`~imgclf.data.dataset` (the types), :mod:`~imgclf.data.cifar`,
:mod:`~imgclf.data.idx` and :mod:`~imgclf.data.folder` (the readers), :mod:`~imgclf.data.formats`
(format detection, :func:`open_dataset`), :mod:`~imgclf.data.splits` (validation splits),
:mod:`~imgclf.data.decode` (the decode pool), :mod:`~imgclf.data.cache` (the decoded-folder cache)
and :mod:`~imgclf.data.hashing` (file identity for caches).
"""

from imgclf.data.cache import cache_key, default_cache_dir
from imgclf.data.cifar import read_cifar10
from imgclf.data.dataset import RawDataset, RawSplit, as_rgb_or_gray, to_geometry
from imgclf.data.decode import decode_files, decode_folder
from imgclf.data.folder import scan_folder
from imgclf.data.formats import FORMATS, detect_format, open_dataset
from imgclf.data.hashing import hash_files
from imgclf.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_idx, read_idx_dataset
from imgclf.data.splits import split_off_val, stratified_split

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "FORMATS", "RawDataset", "RawSplit", "as_rgb_or_gray",
    "cache_key", "decode_files", "decode_folder", "default_cache_dir", "detect_format", "hash_files",
    "open_dataset", "read_cifar10", "read_idx", "read_idx_dataset", "scan_folder", "split_off_val",
    "stratified_split", "to_geometry",
]
