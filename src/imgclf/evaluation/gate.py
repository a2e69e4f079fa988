"""The accuracy gate: does a candidate engine (int8, bf16) classify like the fp32 model?

Both engines see the same inputs through the serving path (:func:`imgclf.pipeline.prepare`). On a
labelled split the candidate's top-1 accuracy must be within ``max_top1_drop`` points of the
reference's; on unlabelled photos its top-1 must agree with the reference's on at least
``min_agreement`` percent of them and its top-5 must share at least ``min_top5_overlap`` percent
of the reference's top-5 classes. Agreement and overlap are recorded for the labelled split too.
The result is a :class:`~imgclf.package.GateRecord`; :func:`record_gate` writes it into ``model.json``.
Engine-agnostic and torch-free: anything that implements :class:`imgclf.engine.Engine` is gated alike.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imgclf.data.dataset import RawDataset
from imgclf.engine import Engine
from imgclf.errors import UserError
from imgclf.evaluation.evaluate import split_probabilities
from imgclf.evaluation.metrics import Probabilities, compute_metrics
from imgclf.images import ImageDecodeError
from imgclf.package import GateRecord, load_package, update_meta
from imgclf.pipeline import prepare


class GateError(UserError, ValueError):
    """The gate cannot be measured (no images, engines that do not match)."""


@dataclass(frozen=True)
class GateThresholds:
    """What a candidate must reach, in percentage points."""

    max_top1_drop: float = 0.5  # labelled: candidate top-1 >= reference top-1 - this
    min_agreement: float = 99.0  # unlabelled: same top-1 class as the reference on this % of photos
    min_top5_overlap: float = 98.0  # unlabelled: mean share of the reference's top-5 in the candidate's


DEFAULT_THRESHOLDS = GateThresholds()


@dataclass(frozen=True)
class LabelledSplit:
    """A labelled split of a dataset, and how to name it in the record."""

    dataset: RawDataset
    split: str

    def describe(self) -> str:
        return f"{self.dataset.name} ({self.split} split, {self.dataset.root})"


@dataclass(frozen=True)
class Comparison:
    """Reference vs candidate on one image set."""

    images: int
    top1_agreement: float  # percent
    top5_overlap: float  # percent
    top1_reference: float | None = None  # accuracy in percent, labelled sets only
    top1: float | None = None


def compare(reference: Probabilities, candidate: Probabilities) -> tuple[float, float]:
    """Top-1 agreement and mean top-k overlap (k = min(5, classes)) of two probability arrays, in percent."""
    if reference.shape != candidate.shape or not len(reference):
        raise GateError(f"cannot compare outputs of shapes {reference.shape} and {candidate.shape}")
    k = min(5, reference.shape[1])
    agree = float((reference.argmax(1) == candidate.argmax(1)).mean()) * 100
    ref5 = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    cand5 = np.argsort(-candidate, axis=1, kind="stable")[:, :k]
    shared = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref5, cand5, strict=True)]
    return agree, float(np.mean(shared)) / k * 100


def _photo_inputs(photos: Sequence[Path], engine: Engine, workers: int) -> npt.NDArray[np.float32]:
    """Model inputs of the readable photos (an unreadable one is skipped: the gate measures the model)."""
    spec = engine.spec

    def load(path: Path) -> npt.NDArray[np.float32] | None:
        try:
            return prepare(path.read_bytes(), spec)
        except (ImageDecodeError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        kept = [x for x in pool.map(load, photos) if x is not None]
    if not kept:
        raise GateError(f"none of the {len(photos)} photos given to the accuracy gate could be read")
    return np.stack(kept)


def _probabilities(engine: Engine, inputs: npt.NDArray[np.float32], batch_size: int) -> Probabilities:
    return np.concatenate([np.asarray(engine.probabilities(inputs[i:i + batch_size]), np.float32)
                           for i in range(0, len(inputs), batch_size)])


def compare_on_photos(reference: Engine, candidate: Engine, photos: Sequence[Path], *,
                      batch_size: int = 32, workers: int = 2) -> Comparison:
    inputs = _photo_inputs(photos, reference, workers)
    agree, overlap = compare(_probabilities(reference, inputs, batch_size), _probabilities(candidate, inputs, batch_size))
    return Comparison(len(inputs), agree, overlap)


def compare_on_split(reference: Engine, candidate: Engine, labelled: LabelledSplit, *,
                     batch_size: int = 32, workers: int = 2) -> Comparison:
    data = labelled.dataset.split(labelled.split)
    if data is None or not len(data):
        raise GateError(f"{labelled.dataset.root} has no {labelled.split} split to gate on")
    ref = split_probabilities(reference, data, batch_size=batch_size, workers=workers)
    cand = split_probabilities(candidate, data, batch_size=batch_size, workers=workers)
    if not ref.kept:
        raise GateError(f"no image of {labelled.describe()} could be read")
    targets = ref.targets(data)
    classes = labelled.dataset.classes
    acc_ref = compute_metrics(labelled.split, classes, list(reference.labels), targets, ref.probs).accuracy
    acc = compute_metrics(labelled.split, classes, list(candidate.labels), targets, cand.probs).accuracy
    agree, overlap = compare(ref.probs, cand.probs)
    return Comparison(len(ref.kept), agree, overlap, acc_ref * 100, acc * 100)


def _check_engines(reference: Engine, candidate: Engine) -> None:
    if list(reference.labels) != list(candidate.labels):
        raise GateError("the candidate model's labels differ from the reference's; it is not the same model")
    if reference.spec != candidate.spec:
        raise GateError("the candidate model's preprocessing differs from the reference's")


def verdict(labelled: Comparison | None, photos: Comparison | None,
            thresholds: GateThresholds = DEFAULT_THRESHOLDS) -> str:
    """Why the gate fails ("" when it passes)."""
    reasons = []
    if labelled is not None and labelled.top1 is not None and labelled.top1_reference is not None:
        drop = labelled.top1_reference - labelled.top1
        if drop > thresholds.max_top1_drop:
            reasons.append(f"top-1 {labelled.top1:.2f}% is {drop:.2f} points below fp32's "
                           f"{labelled.top1_reference:.2f}% (allowed: {thresholds.max_top1_drop})")
    if photos is not None:
        if photos.top1_agreement < thresholds.min_agreement:
            reasons.append(f"top-1 agrees with fp32 on {photos.top1_agreement:.2f}% of photos "
                           f"(needed: {thresholds.min_agreement}%)")
        if photos.top5_overlap < thresholds.min_top5_overlap:
            reasons.append(f"top-5 overlap with fp32 is {photos.top5_overlap:.2f}% "
                           f"(needed: {thresholds.min_top5_overlap}%)")
    return "; ".join(reasons)


def measure_gate(reference: Engine, candidate: Engine, *, labelled: LabelledSplit | None,
                 photos: Sequence[Path] | None, engine: str, precision: str,
                 thresholds: GateThresholds = DEFAULT_THRESHOLDS, batch_size: int = 32,
                 workers: int = 2) -> GateRecord:
    """Gate ``candidate`` (``engine`` at ``precision``) against ``reference`` (fp32) on a labelled
    split and/or unlabelled photos; at least one is needed."""
    if labelled is None and not photos:
        raise GateError("the accuracy gate needs a labelled split or photos to measure on")
    _check_engines(reference, candidate)
    on_split = compare_on_split(reference, candidate, labelled, batch_size=batch_size,
                                workers=workers) if labelled is not None else None
    on_photos = compare_on_photos(reference, candidate, photos, batch_size=batch_size,
                                  workers=workers) if photos else None
    reason = verdict(on_split, on_photos, thresholds)
    parts = [c for c in (on_split, on_photos) if c is not None]
    images = sum(c.images for c in parts)
    # Agreement and overlap over every image measured, weighted by count.
    agreement = sum(c.top1_agreement * c.images for c in parts) / images
    overlap = sum(c.top5_overlap * c.images for c in parts) / images
    data = "; ".join(([labelled.describe()] if labelled is not None and on_split is not None else [])
                     + ([f"{on_photos.images} unlabelled photos"] if on_photos is not None else []))
    return GateRecord(
        engine=engine, precision=precision, passed=not reason, images=images, labelled=on_split is not None,
        top1_reference=None if on_split is None else _round(on_split.top1_reference),
        top1=None if on_split is None else _round(on_split.top1),
        top1_agreement=round(agreement, 3), top5_overlap=round(overlap, 3), data=data, reason=reason,
        measured_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def record_gate(package_dir: str | os.PathLike[str], record: GateRecord) -> None:
    """Write ``record`` into the package's ``model.json``, replacing an older record of the same
    engine and precision (the file is replaced whole: see :func:`imgclf.package.update_meta`)."""
    meta = load_package(Path(package_dir), verify_hash=False).meta
    gates = [g for g in meta.gates if (g.engine, g.precision) != (record.engine, record.precision)]
    update_meta(package_dir, "gates", [g.to_dict() for g in (*gates, record)])
