"""Decoding image files for training and evaluation: a process pool over the one decode path.

Every file goes through :func:`imgclf.pipeline.load_pixels` (the one decode path, then the spec's
geometry), the steps the server applies to an upload, so a model trains on the pixels it will serve.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.cache import Decoded, cache_path, read_cache, write_cache
from imgclf.data.dataset import Pixels, RawDataset, RawSplit
from imgclf.errors import UserError
from imgclf.images import ImageDecodeError
from imgclf.pipeline import load_pixels
from imgclf.preprocess import PreprocessSpec

CHUNK = 512  # files per worker task: large enough to amortise the pickling of results

_Job = tuple[list[str], dict[str, Any]]
_Result = tuple[Pixels, list[tuple[int, str]]]


def _decode_chunk(job: _Job) -> _Result:
    """Worker: decode + resize a list of files. Returns stacked arrays and (position, reason) failures."""
    paths, spec_dict = job
    spec = PreprocessSpec.from_dict(spec_dict)
    out = np.zeros((len(paths), spec.input_size, spec.input_size, spec.channels), np.uint8)
    failed: list[tuple[int, str]] = []
    for i, p in enumerate(paths):
        try:
            out[i] = load_pixels(Path(p).read_bytes(), spec)
        except (ImageDecodeError, OSError) as exc:
            failed.append((i, str(exc) or type(exc).__name__))
    return out, failed


def default_workers() -> int:
    return min(len(os.sched_getaffinity(0)), 8)


def decode_files(files: list[Path], spec: PreprocessSpec, *, workers: int | None = None,
                 progress: Callable[[int], object] | None = None) -> tuple[Pixels, list[tuple[int, str]]]:
    """Decode ``files`` to ``(N, S, S, C)`` uint8 (failed entries left black) and list the failures.

    Large lists are spread over a pool of processes: decoding is CPU-bound Python + PIL work.
    """
    workers = workers if workers is not None else default_workers()
    jobs: list[_Job] = [([str(f) for f in files[i:i + CHUNK]], spec.to_dict()) for i in range(0, len(files), CHUNK)]
    out = np.zeros((len(files), spec.input_size, spec.input_size, spec.channels), np.uint8)
    failed: list[tuple[int, str]] = []

    def collect(results: Iterable[_Result]) -> None:
        for j, (arr, bad) in enumerate(results):
            start = j * CHUNK
            out[start:start + len(arr)] = arr
            failed.extend((start + i, reason) for i, reason in bad)
            if progress:
                progress(len(arr))

    if workers <= 1 or len(jobs) <= 1:
        collect(map(_decode_chunk, jobs))
    else:
        # spawn: the parent may hold OpenMP threads (torch), which fork does not copy safely.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            collect(pool.map(_decode_chunk, jobs))
    return out, failed


def _decode_cached(ds: RawDataset, files: list[Path], spec: PreprocessSpec, *, cache_dir: Path | None,
                   workers: int | None, progress: bool, use_cache: bool) -> Decoded:
    path = cache_path(files, spec, cache_dir)
    cached = read_cache(path, len(files)) if use_cache else None
    if cached is not None:
        return cached
    from tqdm import tqdm

    with tqdm(total=len(files), unit="img", desc=f"decoding {ds.name}", file=sys.stderr,
              disable=not (progress and sys.stderr.isatty())) as bar:
        images, failed = decode_files(files, spec, workers=workers, progress=bar.update)
    decoded = Decoded(images, failed)
    if use_cache:
        write_cache(path, decoded)
    return decoded


def decode_folder(ds: RawDataset, spec: PreprocessSpec, *, cache_dir: Path | None = None,
                  workers: int | None = None, progress: bool = True, use_cache: bool = True) -> RawDataset:
    """Decode every split of a scanned folder dataset (in place), through a cache keyed by the file list.

    Unreadable files are dropped from their split and listed in ``ds.skipped``; never fatal unless
    a whole split is unreadable.
    """
    all_files = [f for s in ds.splits.values() for f in (s.files or [])]
    decoded = _decode_cached(ds, all_files, spec, cache_dir=cache_dir, workers=workers, progress=progress,
                             use_cache=use_cache)
    bad_set = {i for i, _ in decoded.failed}
    ds.skipped = [(ds.relative(all_files[i]), reason) for i, reason in decoded.failed]
    offset = 0
    for name, split in list(ds.splits.items()):
        n = len(split)
        keep = np.asarray([i for i in range(n) if offset + i not in bad_set], dtype=np.int64)
        whole = RawSplit(split.labels, decoded.images[offset:offset + n], split.files)
        offset += n
        ds.splits[name] = whole.take(keep) if len(keep) < n else whole
        if len(ds.splits[name]) == 0:
            raise UserError(f"no readable images in the {name} split of {ds.root}")
    ds.grayscale = spec.grayscale
    return ds
