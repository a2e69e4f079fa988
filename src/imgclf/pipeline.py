"""Encoded bytes -> decode -> preprocess -> model input: the one path of serving, prediction, evaluation
and training."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imgclf.images import decode_scaled, image_files
from imgclf.preprocess import PreprocessSpec, decode_min_side, normalize, resize_and_crop


def load_pixels(data: bytes, spec: PreprocessSpec, *, max_pixels: int | None = None) -> npt.NDArray[np.uint8]:
    """Encoded image bytes -> the spec's ``(S, S, C)`` uint8 pixels (decode + geometry, no normalisation).

    The decoder is told the size the spec shrinks to, so a big JPEG is decoded at 1/2..1/8 scale; an
    image it reduced is resized only where the crop keeps it (a full-size decode keeps the exact path).
    """
    image = decode_scaled(data, max_pixels=max_pixels, min_side=decode_min_side(spec))
    return resize_and_crop(image.pixels, spec, exact=not image.reduced)


def prepare(data: bytes, spec: PreprocessSpec, *, max_pixels: int | None = None) -> npt.NDArray[np.float32]:
    """Encoded image bytes -> model input ``(C, S, S)``: the one decode path, then the one spec."""
    return normalize(load_pixels(data, spec, max_pixels=max_pixels), spec)


def read_error(exc: OSError) -> str:
    """The short message ``imgclf predict`` gives for a file it cannot read."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders become every image file under them, sorted."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(image_files(p))
        else:
            out.append(p)
    return out

