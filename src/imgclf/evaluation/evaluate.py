"""Evaluate an engine on a labelled split through the serving path.

Image files go through :func:`imgclf.pipeline.prepare` (the one decode path, then the model's
preprocessing spec), exactly as ``imgclf serve`` handles an upload; CIFAR/IDX arrays skip only the
decoding and go through the same :func:`imgclf.preprocess.preprocess`. Works with any engine
(ONNX Runtime over a package, or a torch model), and needs no torch for a package.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imgclf.data.dataset import RawDataset, RawSplit, as_rgb_or_gray
from imgclf.engine import Engine
from imgclf.errors import UserError
from imgclf.evaluation.metrics import Evaluation, Probabilities, compute_metrics
from imgclf.images import ImageDecodeError
from imgclf.pipeline import prepare
from imgclf.preprocess import PreprocessSpec, preprocess

_Input = tuple[int, npt.NDArray[np.float32] | None, str | None]


@dataclass
class SplitOutput:
    """An engine's probabilities on a split: one row per readable example, in split order."""

    probs: Probabilities  # (M, K), K = the engine's labels
    kept: list[int]  # the split position of each row
    failed: list[tuple[int, str]]  # (position, why) of the unreadable examples

    def targets(self, split: RawSplit) -> npt.NDArray[np.int64]:
        """The dataset class of each row."""
        return np.asarray(split.labels, dtype=np.int64)[self.kept]


def _inputs(split: RawSplit, spec: PreprocessSpec, workers: int) -> Iterator[_Input]:
    """(position, model input or None, error) per example, in order."""
    files = split.files
    if files is not None:
        def load(i: int) -> _Input:
            try:
                return i, prepare(files[i].read_bytes(), spec), None
            except (ImageDecodeError, OSError) as exc:
                return i, None, str(exc) or type(exc).__name__

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            yield from pool.map(load, range(len(split)))
    elif split.images is not None:
        for i, img in enumerate(split.images):
            yield i, preprocess(as_rgb_or_gray(img, spec), spec), None
    else:
        raise ValueError("a split needs files or decoded images")


def split_probabilities(engine: Engine, split: RawSplit, *, batch_size: int = 64, workers: int = 2,
                        progress: bool = False, desc: str = "evaluating") -> SplitOutput:
    """Class probabilities of every readable example of ``split`` through the serving path."""
    from tqdm import tqdm

    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    chunks: list[Probabilities] = []
    pending: list[npt.NDArray[np.float32]] = []

    def flush() -> None:
        if pending:
            chunks.append(np.asarray(engine.probabilities(np.stack(pending)), dtype=np.float32))
            pending.clear()

    with tqdm(total=len(split), unit="img", desc=desc, file=sys.stderr, disable=not progress) as bar:
        for i, x, err in _inputs(split, engine.spec, workers):
            if x is None:
                failed.append((i, err or "unreadable"))
            else:
                pending.append(x)
                kept.append(i)
                if len(pending) == batch_size:
                    flush()
            bar.update(1)
        flush()
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(engine.labels)), np.float32)
    return SplitOutput(probs, kept, failed)


def evaluate_split(engine: Engine, dataset: RawDataset, split: str, output: SplitOutput) -> Evaluation:
    """Metrics of ``output`` (what :func:`split_probabilities` gave on ``split``)."""
    data = dataset.split(split)
    if data is None:
        raise UserError(f"{dataset.root} has no {split} split (it has: {', '.join(dataset.splits)})")
    files = data.files
    errors = [(dataset.relative(files[i]) if files is not None else str(i), err) for i, err in output.failed]
    return compute_metrics(split, dataset.classes, list(engine.labels), output.targets(data), output.probs, errors)


def evaluate_engine(engine: Engine, dataset: RawDataset, split: str = "test", *, batch_size: int = 64,
                    workers: int = 2, progress: bool | None = None) -> Evaluation:
    """Run ``engine`` over one split of ``dataset``; unreadable files are listed, not counted."""
    data = dataset.split(split)
    if data is None:
        raise UserError(f"{dataset.root} has no {split} split (it has: {', '.join(dataset.splits)})")
    show = progress if progress is not None else sys.stderr.isatty()
    output = split_probabilities(engine, data, batch_size=batch_size, workers=workers, progress=show,
                                 desc=f"evaluating {split}")
    return evaluate_split(engine, dataset, split, output)
