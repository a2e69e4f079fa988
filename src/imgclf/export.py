"""Export a torch classifier to a model package and check ONNX Runtime against torch."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclf.package import ModelPackage, PackageError, PackageMeta, write_package
from imgclf.preprocess import PreprocessSpec, preprocess

OPSET = 17


@dataclass
class ExportReport:
    package: ModelPackage
    max_abs_diff: float
    top1_torch: int
    top1_onnx: int


def export_onnx(model: torch.nn.Module, spec: PreprocessSpec, path: Path, *,
                input_name: str = "input", output_name: str = "logits") -> None:
    """Write ``model`` as ONNX with a dynamic batch dimension."""
    model = model.eval()
    dummy = torch.zeros(2, spec.channels, spec.input_size, spec.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter is quick and exact for plain CNNs.
        torch.onnx.export(
            model, (dummy,), str(path),
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def verify_onnx(model: torch.nn.Module, onnx_path: Path, spec: PreprocessSpec, image: np.ndarray,
                input_name: str = "input") -> tuple[float, int, int]:
    """Max abs logit difference between torch and ONNX Runtime on ``image`` (plus a flipped copy,
    so the batch dimension is exercised), and each backend's top-1 class."""
    import onnxruntime as ort

    x = preprocess(image, spec)
    batch = np.stack([x, x[:, :, ::-1]]).astype(np.float32)
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(batch)).float().numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {input_name: batch})[0]
    return float(np.abs(ref - got).max()), int(ref[0].argmax()), int(got[0].argmax())


def export_package(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    name: str,
    labels: list[str],
    spec: PreprocessSpec,
    provenance: dict[str, Any] | None = None,
    version: str = "1",
    check_image: np.ndarray | None = None,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export, verify on a real photo, then write the package. A failed check writes nothing."""
    if check_image is None:
        from imgclf.samples import reference_photo

        check_image = reference_photo()
    with tempfile.TemporaryDirectory(prefix="imgclf-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, spec, onnx_path)
        diff, t1, o1 = verify_onnx(model, onnx_path, spec, check_image)
        # Relative to the logits' scale: float32 reordering gives ~1e-5 on logits of ~10.
        with torch.inference_mode():
            scale = max(1.0, float(model(torch.from_numpy(preprocess(check_image, spec)[None])).abs().max()))
        if diff > tolerance * scale or t1 != o1:
            raise PackageError(
                f"ONNX Runtime disagrees with torch for {name}: max abs diff {diff:.3g}, top-1 {o1} vs {t1}"
            )
        prov = dict(provenance or {})
        prov["export_check"] = {"max_abs_diff": diff, "onnx_opset": OPSET, "torch": torch.__version__}
        meta = PackageMeta(name=name, labels=list(labels), preprocess=spec, version=version, provenance=prov)
        package = write_package(out_dir, onnx_path, meta)
    return ExportReport(package, diff, t1, o1)


def export_zoo_model(name: str, out_dir: str | Path, *, weights: str | None = None,
                     allow_download: bool = True) -> ExportReport:
    """Build zoo model ``name`` with its weights and export it as a package."""
    from imgclf import zoo
    from imgclf.zoo.labels import get_labels
    from imgclf.zoo.loading import preprocess_for
    from imgclf.zoo.weights import availability

    entry = zoo.get(name)
    model = zoo.build(name, weights=weights, allow_download=allow_download)
    src = entry.weights
    prov = {
        "architecture": entry.name,
        "family": entry.family,
        "weights": weights or (src.filename if src else None),
        "weights_source": "file" if weights else availability(entry),
        "weights_url": src.url if src and not weights else None,
        "weights_license": src.license if src and not weights else None,
        "dataset": "imagenet-1k",
        "num_params": entry.num_params,
    }
    return export_package(model, out_dir, name=name, labels=list(get_labels(entry.labels)),
                          spec=preprocess_for(entry, weights), provenance=prov)
