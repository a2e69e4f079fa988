"""The decoded-folder cache: one ``.npz`` per (file list, geometry), written atomically.

A damaged or stale file is ignored and rebuilt; a cache that cannot be written only warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.cache import cache_home
from imgclf.data.dataset import Pixels
from imgclf.data.hashing import hash_files
from imgclf.preprocess import PreprocessSpec

CACHE_VERSION = 3  # 2: scaled JPEG decode and torchvision-exact resize; 3: a reduced decode is resized by its crop window


@dataclass
class Decoded:
    """A decoded file list: ``(N, S, S, C)`` uint8 pixels (failed rows black) and the failures."""

    images: Pixels
    failed: list[tuple[int, str]]  # (position, reason)


def geometry(spec: PreprocessSpec) -> dict[str, object]:
    """The spec fields that decide the decoded pixels (mean/std do not)."""
    return {"input_size": spec.input_size, "crop_pct": spec.crop_pct, "resize_mode": spec.resize_mode,
            "interpolation": spec.interpolation, "grayscale": spec.grayscale}


def cache_key(files: list[Path], spec: PreprocessSpec) -> str:
    """Identity of a decoded folder: every file's path, size and mtime, plus the geometry."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "geometry": geometry(spec)}, sort_keys=True).encode())
    hash_files(h, files)
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    return cache_home("datasets")


def cache_path(files: list[Path], spec: PreprocessSpec, cache_dir: Path | None = None) -> Path:
    """Where the decoded form of ``files`` at ``spec``'s geometry is kept."""
    return (cache_dir or default_cache_dir()) / f"{cache_key(files, spec)}.npz"


def read_cache(path: Path, n_files: int) -> Decoded | None:
    """The cached decode, or None when the file is missing, damaged or of another length."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            failed = [(int(i), str(r)) for i, r in zip(z["bad_index"], z["bad_reason"], strict=True)]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a damaged cache file is rebuilt
    if len(images) != n_files or images.dtype != np.uint8:
        return None
    return Decoded(images, failed)


def write_cache(path: Path, decoded: Decoded) -> None:
    """Save ``decoded`` at ``path``; concurrent readers see the old file or the whole new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=decoded.images,
                         bad_index=np.asarray([i for i, _ in decoded.failed], dtype=np.int64),
                         bad_reason=np.asarray([r for _, r in decoded.failed], dtype=str))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        print(f"imgclf: warning: could not write dataset cache {path}: {exc}", file=sys.stderr)
