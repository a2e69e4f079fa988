"""Frozen-backbone features, computed once and cached on disk.

While the backbone is frozen the head only ever sees the backbone's output, so that output is
computed once per image (batch norm in inference mode, no augmentation: the same decode, resize,
crop and normalisation as serving) and stored under a key that covers everything it depends on: the
backbone's weights, the preprocessing spec and the image files (path, size, modification time).
A second run on the same folder and base model loads the features instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf.cache import cache_home
from imgclf.data import hash_files
from imgclf.finetune.backbone import pooled
from imgclf.preprocess import PreprocessSpec
from imgclf.train.data import ImageTransform

FORMAT = 1


def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes and values): the backbone's identity."""
    h = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(*, architecture: str, weights: str, spec: PreprocessSpec, files: Sequence[Path]) -> str:
    """Key of one feature set; any change to model, weights, preprocessing or files changes it."""
    h = hashlib.sha256(json.dumps({
        "format": FORMAT,
        "architecture": architecture,
        "weights": weights,
        "preprocess": spec.to_dict(),
        "augmentation": "none",
        "batch_norm": "inference",
    }, sort_keys=True).encode())
    hash_files(h, [f.resolve() for f in files])
    return h.hexdigest()[:32]


@dataclass
class FeatureSet:
    features: torch.Tensor  # (N, D) float32, one row per image
    path: Path  # the cache file
    hit: bool  # loaded from the cache rather than computed


@torch.inference_mode()
def extract(backbone: nn.Module, images: torch.Tensor, transform: ImageTransform, *, order: torch.Tensor | None = None,
            batch_size: int = 64, progress: bool | None = None, desc: str = "features") -> torch.Tensor:
    """Backbone outputs for uint8 ``(N, C, H, W)`` images (taken in ``order`` if given),
    normalised by ``transform`` (no augmentation), with the backbone in inference mode (batch norm
    uses its running statistics)."""
    from tqdm import tqdm

    backbone.eval()
    index = order if order is not None else torch.arange(len(images))
    out = []
    with tqdm(total=len(index), unit="img", desc=desc, file=sys.stderr, leave=False,
              disable=not (sys.stderr.isatty() if progress is None else progress)) as bar:
        for i in range(0, len(index), batch_size):
            x = transform(images[index[i:i + batch_size]]).contiguous(memory_format=torch.channels_last)
            out.append(pooled(backbone(x)).float())
            bar.update(len(x))
    return torch.cat(out) if out else torch.zeros(0, 0)


def cached_features(backbone: nn.Module, images: torch.Tensor, files: Sequence[Path], spec: PreprocessSpec, *,
                    architecture: str, cache_dir: Path | None = None, batch_size: int = 64,
                    progress: bool | None = None, use_cache: bool = True) -> FeatureSet:
    """Features of ``images`` (decoded from ``files``, row for row): loaded from the cache when
    the key matches, else computed and saved.

    The cache holds the rows sorted by file, so any split of the same files (another seed or
    validation fraction) finds it; the result comes back in the caller's order.
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_home("features")
    names = [str(Path(f).resolve()) for f in files]
    order = sorted(range(len(files)), key=names.__getitem__)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    sorted_files = [Path(files[i]) for i in order]
    sorted_names = np.array([names[i] for i in order])
    key = cache_key(architecture=architecture, weights=weights_digest(backbone), spec=spec, files=sorted_files)
    path = folder / f"{architecture}-{key}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                feats, saved = data["features"], data["files"]
            if feats.shape[0] == len(files) and np.array_equal(saved, sorted_names):
                return FeatureSet(torch.from_numpy(feats.astype(np.float32, copy=False))[inverse], path, hit=True)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache file is recomputed and overwritten
    feats = extract(backbone, images, ImageTransform(spec), order=torch.tensor(order, dtype=torch.long),
                    batch_size=batch_size, progress=progress)
    if use_cache:
        _save(path, feats.numpy(), sorted_names)
    return FeatureSet(feats[inverse], path, hit=False)


def _save(path: Path, feats: np.ndarray, names: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".features-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, features=feats, files=names)
            os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written cache
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        print(f"imgclf: warning: could not write the feature cache {path}: {exc}", file=sys.stderr)
