"""Bytes -> decode -> preprocess -> engine -> top-k, shared by ``imgclf predict`` and evaluation."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.engine import Engine, top_k
from imgclf.images import ImageDecodeError, decode, image_files
from imgclf.preprocess import PreprocessSpec, decode_min_side, normalize, resize_and_crop


def load_pixels(data: bytes, spec: PreprocessSpec, *, max_pixels: int | None = None) -> npt.NDArray[np.uint8]:
    """Encoded image bytes -> the spec's ``(S, S, C)`` uint8 pixels (decode + geometry, no normalisation).

    The decoder is told the size the spec shrinks to, so a big JPEG is decoded at 1/2..1/8 scale.
    """
    image = decode(data, max_pixels=max_pixels, min_side=decode_min_side(spec))
    return resize_and_crop(image, spec)


def prepare(data: bytes, spec: PreprocessSpec, *, max_pixels: int | None = None) -> npt.NDArray[np.float32]:
    """Encoded image bytes -> model input ``(C, S, S)``: the one decode path, then the one spec."""
    return normalize(load_pixels(data, spec, max_pixels=max_pixels), spec)


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


def _load(path: Path, spec: PreprocessSpec) -> np.ndarray | str:
    try:
        return prepare(path.read_bytes(), spec)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory"
    except PermissionError:
        return "permission denied"
    except ImageDecodeError as exc:
        return str(exc)


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def classify_files(engine: Engine, files: list[Path], *, k: int = 5, batch_size: int = 16,
                   progress: bool | None = None, workers: int = 2) -> list[dict[str, Any]]:
    """One result per file, in order: ``{"file", "predictions"}`` or ``{"file", "error"}``.

    Decoding runs on a small thread pool (PIL releases the GIL) while the engine works.
    """
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty() and len(files) > batch_size
    results: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr) as bar:
        chunks = list(_batches(files, batch_size))
        pending = pool.map(lambda p: _load(p, engine.spec), chunks[0]) if chunks else iter(())
        for i, chunk in enumerate(chunks):
            loaded = list(pending)
            if i + 1 < len(chunks):  # start decoding the next batch while this one runs
                pending = pool.map(lambda p: _load(p, engine.spec), chunks[i + 1])
            good = [(p, x) for p, x in zip(chunk, loaded, strict=True) if isinstance(x, np.ndarray)]
            preds = {}
            if good:
                probs = engine.probabilities(np.stack([x for _, x in good]))
                preds = {p: row for (p, _), row in zip(good, top_k(probs, engine.labels, k), strict=True)}
            for p, x in zip(chunk, loaded, strict=True):
                if isinstance(x, str):
                    results.append({"file": str(p), "error": x})
                else:
                    results.append({"file": str(p), "predictions": [q.to_dict() for q in preds[p]]})
            bar.update(len(chunk))
    return results
