"""The decode stage of a bulk job (a Ray Data map stage): locations -> the model's pixels, or why not.

Each file goes through :func:`imgclf.pipeline.load_pixels`, the decode + resize + crop of
``imgclf predict`` and the server, so a file gets the same pixels on every path. The stage hands on
``uint8`` pixels (a quarter of the float32 input) and the predictor normalises them
(:func:`imgclf.preprocess.normalize`, the rest of :func:`imgclf.pipeline.prepare`); Ray Data fuses
the two stages into one actor, so the pixels stay in the worker's memory.
A file that cannot be read or decoded gets the one-line message ``imgclf predict`` gives and zero
pixels, and travels on as a row with an error: one bad file never fails the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.bulk.sources import is_uri
from imgclf.images import ImageDecodeError
from imgclf.pipeline import load_pixels, read_error
from imgclf.preprocess import PreprocessSpec

Batch = dict[str, npt.NDArray[Any]]


def read_bytes(location: str) -> bytes:
    """A local path's or a URI's bytes (URIs through pyarrow's filesystems: s3, gs, hdfs, abfs, file)."""
    if not is_uri(location):
        return Path(location).read_bytes()
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    with fs.open_input_stream(path) as f:
        data: bytes = f.read()
    return data


def load_one(location: str, spec: PreprocessSpec) -> npt.NDArray[np.uint8] | str:
    """The spec's ``(S, S, C)`` pixels of one file, or the message saying why it cannot be used."""
    try:
        return load_pixels(read_bytes(location), spec)
    except OSError as exc:
        return read_error(exc)
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a filesystem's own error (pyarrow): the row says it, the job goes on
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot read: {first}"


def decode_batch(batch: Batch, spec: PreprocessSpec) -> Batch:
    """``{"path"}`` -> ``{"path", "pixels" (N, S, S, C) uint8, "error"}`` ("" where the file is good)."""
    paths = [str(p) for p in batch["path"]]
    channels = 1 if spec.grayscale else 3
    pixels = np.zeros((len(paths), spec.input_size, spec.input_size, channels), np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    for i, location in enumerate(paths):
        loaded = load_one(location, spec)
        if isinstance(loaded, str):
            errors[i] = loaded
        else:
            pixels[i] = loaded
    return {"path": np.asarray(paths, dtype=object), "pixels": pixels, "error": errors}
