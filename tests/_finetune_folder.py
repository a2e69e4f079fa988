"""Small generated image folders for the fine-tuning tests: one shape and colour per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"circles": (220, 40, 40), "squares": (40, 200, 60), "triangles": (40, 70, 230)}


def draw(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A noisy background with one shape of the class's colour at a random place and scale."""
    img = rng.integers(90, 170, (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    r = rng.uniform(0.2, 0.35) * size
    cy, cx = rng.uniform(r, size - r, 2)
    if kind == "circles":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    elif kind == "squares":
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    else:
        mask = (yy > cy - r) & (yy < cy + r) & (abs(xx - cx) < (yy - (cy - r)) / 2)
    colour = np.asarray(CLASSES[kind], np.float32) + rng.normal(0, 12, 3)
    img[mask] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, counts: dict[str, int], *, seed: int = 0, corrupt: dict[str, int] | None = None) -> Path:
    """``root/<class>/NNN.{jpg,png}`` with ``counts[class]`` images, plus ``corrupt[class]``
    files that are not decodable (a truncated JPEG and a text file named .jpg)."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        kind = cls if cls in CLASSES else list(CLASSES)[hash(cls) % len(CLASSES)]
        for i in range(n):
            arr = draw(kind, rng, int(rng.integers(56, 96)))
            ext = "png" if i % 4 == 0 else "jpg"
            Image.fromarray(arr).save(d / f"{i:03d}.{ext}")
        for j in range((corrupt or {}).get(cls, 0)):
            bad = d / f"broken{j}.jpg"
            if j % 2 == 0:
                good = (d / "000.png").read_bytes() if (d / "000.png").exists() else b""
                bad.write_bytes(good[: len(good) // 3] or b"\xff\xd8\xff")
            else:
                bad.write_text("this is not an image")
    return root
