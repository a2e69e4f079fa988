"""Keras model files imported once, then served from the package cache: ``imgclf serve --model
model.h5`` (and predict, evaluate) import on first use, keyed by the file's content."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from imgclf.importers.keras import IMPORTER_VERSION, import_keras, model_name
from imgclf.importers.keras_file import KerasImportError
from imgclf.package import ModelPackage, cache_dir, is_package_dir, load_package, sha256_file

LABEL_SIDECARS = ("{stem}.labels.txt", "labels.txt")


def sidecar_labels_file(path: str | os.PathLike[str]) -> Path | None:
    """``model.labels.txt`` (or ``labels.txt``) beside ``model.h5``: the class names of a served file."""
    p = Path(path)
    for pattern in LABEL_SIDECARS:
        candidate = p.with_name(pattern.format(stem=p.stem))
        if candidate.is_file():
            return candidate
    return None


def keras_cache_path(path: str | os.PathLike[str]) -> Path:
    """Where the package imported from this file lives: keyed by the file's and its labels' content."""
    p = Path(path)
    if not p.is_file():
        raise KerasImportError(f"Keras model file not found: {p}")
    h = hashlib.sha256(f"imgclf-keras-import-{IMPORTER_VERSION}\n".encode())
    h.update(sha256_file(p).encode())
    labels = sidecar_labels_file(p)
    if labels is not None:
        h.update(b"\nlabels\n" + sha256_file(labels).encode())
    # The last component is the package name, which is what `imgclf serve` shows for it.
    return cache_dir() / "keras" / h.hexdigest()[:24] / model_name(p)


def cached_keras_package(path: str | os.PathLike[str]) -> Path | None:
    """The cached package for this file, if it was imported before (needs neither Keras nor torch)."""
    target = keras_cache_path(path)
    return target if is_package_dir(target) else None


def ensure_keras_package(path: str | os.PathLike[str], *, quiet: bool = False) -> ModelPackage:
    """A package for a Keras model file: imported once, then read from the cache.

    The class names come from a labels file beside the model (``model.labels.txt`` or
    ``labels.txt``), or are ImageNet's for a 1000-way head.
    """
    target = keras_cache_path(path)
    if is_package_dir(target):
        return load_package(target)
    labels_file = sidecar_labels_file(path)
    labels = None
    if labels_file is not None:
        from imgclf.package import read_labels_file

        labels = read_labels_file(labels_file)
    if not quiet:
        # stderr: stdout may be a JSON answer (imgclf predict --json).
        print(f"importing {path} into {target} (once) ...", file=sys.stderr, flush=True)
    return import_keras(path, target, labels=labels).package
