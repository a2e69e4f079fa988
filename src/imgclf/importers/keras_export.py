"""Export a loaded Keras model (a torch module on Keras' torch backend) to ONNX, and the checks that
the exported graph runs: any batch size, the same answers as Keras on a real photo."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.importers.keras_file import KerasImportError, first_line
from imgclf.preprocess import PreprocessSpec


@contextlib.contextmanager
def silenced_output() -> Iterator[None]:
    """On failure the TorchScript exporter prints the whole graph from C++ (file descriptors 1
    and 2, out of Python's reach); the user needs none of it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def export_model(module: Any, spec: PreprocessSpec, path: Path, output_name: str, source: str) -> None:
    """ONNX with a dynamic batch dimension: the TorchScript exporter (quick, exact for plain CNNs),
    else torch.export, which also takes layers whose shapes the tracer cannot keep static
    (LayerNormalization, for one)."""
    import torch

    from imgclf.export import OPSET, export_onnx

    try:
        with silenced_output():
            export_onnx(module, spec, path, output_name=output_name)
        return
    except Exception:  # noqa: BLE001, S110 - the second exporter gets its chance below
        pass
    dummy = torch.zeros(2, spec.channels, spec.input_size, spec.input_size)
    quiet = logging.getLogger("torch.onnx")  # it warns about torchvision ops a classifier never uses
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (dummy,), input_names=["input"], output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=max(OPSET, 18),
                dynamo=True, verbose=False,
            )
            program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - the exporter's errors are long; one line is enough
        raise KerasImportError(f"{source}: cannot export the model to ONNX: {first_line(exc)}") from None
    finally:
        quiet.setLevel(level)


def batch_size_check(module: Any, onnx_path: Path, spec: PreprocessSpec, image: Any) -> float:
    """Max abs difference on batches of 1 and 3: a batch size baked into the graph fails here."""
    import onnxruntime as ort
    import torch

    from imgclf.preprocess import preprocess

    x = preprocess(image, spec)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (x[None], np.stack([x, x[:, :, ::-1], x[:, ::-1, :]])):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with torch.inference_mode():
            ref = module(torch.from_numpy(batch)).float().numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: batch})[0]
        if got.shape != ref.shape:
            raise KerasImportError(f"ONNX output shape {got.shape} for a batch of {len(batch)}, expected {ref.shape}")
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def check_photo() -> np.ndarray:
    """A real photo when scikit-image or scikit-learn ships one, else a fixed synthetic image."""
    from imgclf.samples import reference_photo

    try:
        return reference_photo()
    except RuntimeError:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:320, 0:400]
        smooth = np.stack([x * 255 / 400, y * 255 / 320, (x + y) * 255 / 720], axis=-1)
        return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def as_tensor(image: Any, spec: PreprocessSpec) -> Any:
    import torch

    from imgclf.preprocess import preprocess

    return torch.from_numpy(preprocess(image, spec)[None])


def run_module(module: Any, spec: PreprocessSpec, image: Any) -> Any:
    import torch

    with torch.inference_mode():
        return module(as_tensor(image, spec)).float().numpy()
