"""The one publish step: a trained torch model becomes a model package.

Used by ``imgclf train``, ``imgclf finetune`` and ``imgclf export`` alike:

1. export the model to ONNX (:func:`imgclf.export.export_onnx`);
2. check ONNX Runtime against torch on a real photo (a failed check writes nothing);
3. evaluate the exported graph through the serving path (the one decode path, the package's
   preprocessing spec, ONNX Runtime) on the requested splits of a dataset;
4. write ``model.json`` once, with the typed :class:`~imgclf.package.Provenance` carrying the
   measured metrics and the export check;
5. hand the result to the task's report writer (``report.md``, plots, ``metrics.json``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from imgclf.data.dataset import RawDataset
from imgclf.engine import OnnxEngine
from imgclf.evaluation.evaluate import SplitOutput, evaluate_split, split_probabilities
from imgclf.evaluation.metrics import Evaluation
from imgclf.export import ExportCheck, check_export, export_onnx
from imgclf.package import MODEL_FILE, ModelPackage, PackageMeta, Provenance, check_name, write_package
from imgclf.preprocess import PreprocessSpec


@dataclass
class Published:
    """A written package, the export check and the evaluations measured on the package."""

    package: ModelPackage
    check: ExportCheck
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    outputs: dict[str, SplitOutput] = field(default_factory=dict)  # per split: probabilities and row positions


def split_metrics(evaluations: dict[str, Evaluation]) -> dict[str, float | int | None]:
    """``<split>_accuracy``, ``<split>_top5`` and ``<split>_images`` of every evaluated split."""
    out: dict[str, float | int | None] = {}
    for split, ev in evaluations.items():
        out.update({f"{split}_accuracy": ev.accuracy, f"{split}_top5": ev.top5, f"{split}_images": ev.n})
    return out


def _evaluate(package: ModelPackage, dataset: RawDataset, splits: Sequence[str],
              progress: bool) -> tuple[dict[str, Evaluation], dict[str, SplitOutput]]:
    engine = OnnxEngine(package)
    evaluations: dict[str, Evaluation] = {}
    outputs: dict[str, SplitOutput] = {}
    for name in splits:
        split = dataset.split(name)
        if split is None:
            raise ValueError(f"{dataset.root} has no {name} split to evaluate")
        outputs[name] = split_probabilities(engine, split, progress=progress, desc=f"evaluating {name}")
        evaluations[name] = evaluate_split(engine, dataset, name, outputs[name])
    return evaluations, outputs


def publish(model: torch.nn.Module, out_dir: str | os.PathLike[str], *, name: str, labels: Sequence[str],
            spec: PreprocessSpec, provenance: Provenance | None = None, version: str = "1",
            check_image: npt.NDArray[np.uint8] | None = None, dataset: RawDataset | None = None,
            eval_splits: Sequence[str] = (), report: Callable[[Published], object] | None = None,
            progress: bool = False, tolerance: float = 1e-3) -> Published:
    """Export ``model``, check it, evaluate it on ``eval_splits`` of ``dataset`` through the serving
    path, write the package at ``out_dir`` (replacing what is there, whole) and call ``report``.

    The package's provenance is ``provenance`` plus the export check, the parameter count (when
    not given) and ``<split>_accuracy``/``_top5``/``_images`` of every evaluated split.
    """
    check_name(name)
    provenance = provenance or Provenance()
    if eval_splits and dataset is None:
        raise ValueError("eval_splits needs a dataset")
    if check_image is None:
        from imgclf.samples import reference_photo

        check_image = reference_photo()
    model = model.eval()
    meta = PackageMeta(name=name, labels=list(labels), preprocess=spec, version=version)
    with tempfile.TemporaryDirectory(prefix="imgclf-export-") as tmp:
        staged = ModelPackage(Path(tmp), meta)
        export_onnx(model, spec, staged.onnx_path)
        check = check_export(model, staged.onnx_path, spec, check_image, name=name, tolerance=tolerance)
        evaluations, outputs = (_evaluate(staged, dataset, eval_splits, progress) if dataset is not None
                                else ({}, {}))
        num_params = provenance.num_params
        if num_params is None:
            num_params = sum(p.numel() for p in model.parameters())
        meta.provenance = replace(provenance, num_params=num_params, export_check=check.to_dict(),
                                  metrics={**provenance.metrics, **split_metrics(evaluations)})
        package = write_package(out_dir, Path(tmp) / MODEL_FILE, meta)
    published = Published(package, check, evaluations, outputs)
    if report is not None:
        report(published)
    return published


def export_zoo_model(name: str, out_dir: str | os.PathLike[str], *, weights: str | None = None,
                     allow_download: bool = True) -> Published:
    """Build zoo model ``name`` with its weights and publish it as a package."""
    from imgclf import zoo
    from imgclf.package import DatasetRecord
    from imgclf.zoo.labels import get_labels
    from imgclf.zoo.loading import preprocess_for
    from imgclf.zoo.weights import availability

    entry = zoo.get(name)
    model = zoo.build(name, weights=weights, allow_download=allow_download)
    src = entry.weights
    official = src is not None and not weights
    provenance = Provenance(
        architecture=entry.name, task="export", family=entry.family,  # num_params: counted on the built model
        weights=weights or (src.filename if src else None),
        weights_source="file" if weights else availability(entry),
        weights_url=src.url if official and src else None,
        weights_license=src.license if official and src else None,
        dataset=DatasetRecord(name="imagenet-1k"),
    )
    return publish(model, out_dir, name=name, labels=list(get_labels(entry.labels)),
                   spec=preprocess_for(entry, weights), provenance=provenance)
