"""Real sample photos that ship with scikit-image and scikit-learn (used by demos and checks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def sample_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 array: chelsea (a tabby cat), coffee (a cup), rocket, plus sklearn's china and flower."""
    photos: dict[str, np.ndarray] = {}
    try:
        from skimage import data

        photos.update(chelsea=data.chelsea(), coffee=data.coffee(), rocket=data.rocket())
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        imgs = load_sample_images()
        for fname, arr in zip(imgs.filenames, imgs.images, strict=True):
            photos[Path(fname).stem] = arr
    except ImportError:
        pass
    if not photos:
        raise RuntimeError("sample photos need scikit-image or scikit-learn: pip install scikit-image")
    return photos


def write_sample_photos(out_dir: str | Path, quality: int = 92) -> list[Path]:
    """Write the sample photos as JPEG files (what a user would upload)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in sample_photos().items():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        path = out / f"{name}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def reference_photo() -> np.ndarray:
    """A real photo for export checks: chelsea when scikit-image is present."""
    photos = sample_photos()
    return photos.get("chelsea", next(iter(photos.values())))
