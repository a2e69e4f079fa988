"""torch -> ONNX, and the check that ONNX Runtime gives what torch gives.

The publish step (:mod:`imgclf.publish`) runs both before it writes a package; nothing here writes
``model.json``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from imgclf.package import PackageError
from imgclf.preprocess import PreprocessSpec, preprocess

OPSET = 17


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime vs torch on one real photo (and its mirror image, so the batch dimension is used)."""

    max_abs_diff: float
    top1_torch: int
    top1_onnx: int
    opset: int = OPSET

    def to_dict(self) -> dict[str, Any]:
        """The form kept in a package's provenance."""
        return {"max_abs_diff": self.max_abs_diff, "onnx_opset": self.opset, "torch": torch.__version__}


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


def verify_onnx(model: torch.nn.Module, onnx_path: Path, spec: PreprocessSpec, image: npt.NDArray[np.uint8],
                input_name: str = "input") -> tuple[float, int, int, float]:
    """Max abs logit difference between torch and ONNX Runtime on ``image`` (plus a flipped copy,
    so the batch dimension is exercised), each backend's top-1 class and the logits' scale."""
    import onnxruntime as ort

    x = preprocess(image, spec)
    batch = np.stack([x, x[:, :, ::-1]]).astype(np.float32)
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(batch)).float().numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = np.asarray(sess.run(None, {input_name: batch})[0])
    return float(np.abs(ref - got).max()), int(ref[0].argmax()), int(got[0].argmax()), float(np.abs(ref).max())


def check_export(model: torch.nn.Module, onnx_path: Path, spec: PreprocessSpec, image: npt.NDArray[np.uint8], *,
                 name: str, tolerance: float = 1e-3) -> ExportCheck:
    """Raise :class:`PackageError` unless ONNX Runtime agrees with torch on ``image``."""
    diff, t1, o1, scale = verify_onnx(model, onnx_path, spec, image)
    # Relative to the logits' scale: float32 reordering gives ~1e-5 on logits of ~10.
    if diff > tolerance * max(1.0, scale) or t1 != o1:
        raise PackageError(f"ONNX Runtime disagrees with torch for {name}: max abs diff {diff:.3g}, top-1 {o1} vs {t1}")
    return ExportCheck(diff, t1, o1)
