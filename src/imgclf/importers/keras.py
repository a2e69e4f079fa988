"""Import a whole Keras model file (``.h5`` or ``.keras``) as an imgclf model package.

Keras 3 runs on the torch backend that imgclf already installs (no TensorFlow): the loaded model is
a ``torch.nn.Module``, so it is wrapped with a transpose from imgclf's NCHW input to Keras'
channels-last layout and exported to ONNX by the same exporter and ONNX Runtime check as the zoo.
Preprocessing and output kind are detected (:mod:`imgclf.importers.keras_detect`); command-line
flags override the preprocessing. ``imgclf serve --model model.h5`` imports once into a cache keyed
by the file's content (:mod:`imgclf.importers.keras_cache`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.importers.keras_detect import (
    DetectedBase,
    OutputKind,
    detect_base,
    final_activation,
    input_rescaling_layer,
    spec_for_mode,
)
from imgclf.importers.keras_export import batch_size_check, check_photo, export_model, run_module
from imgclf.importers.keras_file import KerasFile, KerasImportError, check_layers, first_line, read_keras_file
from imgclf.package import (
    ModelPackage,
    PackageMeta,
    Provenance,
    package_name,
    sha256_file,
)
from imgclf.preprocess import PreprocessSpec, caffe_spec

KERAS_EXTRA = "pip install 'imgclf[keras]'"
# Bump when the importer's output changes, so cached imports of unchanged files are redone.
IMPORTER_VERSION = 1
# Fields of PreprocessSpec the import flags may override.
SPEC_FIELDS = ("input_size", "crop_pct", "resize_mode", "interpolation", "mean", "std", "scale", "channel_order")
_VALUE_FIELDS = {"mean", "std", "scale", "channel_order"}


@dataclass
class KerasImportReport:
    package: ModelPackage
    base: str | None  # the keras.applications family the model is built on
    preprocessing: str  # where the preprocessing came from, in words
    activation: str | None  # the output layer's activation
    max_abs_diff: float  # ONNX Runtime vs Keras on a real photo


def load_keras() -> Any:
    """Keras 3 on the torch backend. The backend is chosen only for this import, not for the process."""
    if sys.modules.get("keras") is not None:
        import keras

        if keras.backend.backend() != "torch":
            raise KerasImportError(
                f"Keras is already loaded on the {keras.backend.backend()} backend in this process; "
                "imgclf imports Keras models on the torch backend (set KERAS_BACKEND=torch)"
            )
        return keras
    saved = {k: os.environ.get(k) for k in ("KERAS_BACKEND", "KERAS_TORCH_DEVICE")}
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ.setdefault("KERAS_TORCH_DEVICE", "cpu")  # export and its check run on the CPU
    try:
        import keras
    except ImportError:
        raise KerasImportError(f"importing Keras models needs Keras 3 on PyTorch: {KERAS_EXTRA}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if int(keras.__version__.split(".")[0]) < 3:
        raise KerasImportError(f"Keras {keras.__version__} is installed; imgclf needs Keras 3: {KERAS_EXTRA}")
    return keras


# Layer classes Keras' own applications define outside keras.layers (module, class name).
_APPLICATION_LAYERS = (("keras.src.applications.convnext", "LayerScale"),
                       ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"))


def application_layers() -> dict[str, type]:
    """ConvNeXt's LayerScale and InceptionResNetV2's CustomScaleLayer: part of Keras, but not
    registered, so an HDF5 file (which stores no module names) cannot find them by itself."""
    found: dict[str, type] = {}
    for module, name in _APPLICATION_LAYERS:
        try:
            found[name] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # another Keras version: the layer check names them
            continue
    return found


def load_keras_model(kfile: KerasFile) -> Any:
    """Load the model with Keras (safe mode: nothing in the file runs), after refusing the layers
    imgclf cannot import with a message that names them."""
    keras = load_keras()
    own = application_layers()
    check_layers(kfile, lambda cls: cls in own or isinstance(getattr(keras.layers, cls, None), type))
    suffix = ".keras" if kfile.format == "keras" else ".h5"
    with tempfile.TemporaryDirectory(prefix="imgclf-keras-") as tmp:
        path = kfile.path
        if path.suffix.lower() not in ((".keras",) if kfile.format == "keras" else (".h5", ".hdf5")):
            # Keras picks the reader by suffix; give it the format the file's bytes say.
            path = Path(tmp) / f"model{suffix}"
            path.symlink_to(kfile.path.resolve())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return keras.models.load_model(path, custom_objects=own, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types; the user needs one line
            raise KerasImportError(f"{kfile.path.name}: Keras cannot load the model: {first_line(exc)}") from None


@dataclass(frozen=True)
class ModelIO:
    channels_last: bool
    channels: int
    size: int | None  # None: the model takes any size
    classes: int


def model_io(model: Any, source: str) -> ModelIO:
    """Check the model is a single-image classifier and read its input and output layout."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        raise KerasImportError(f"{source}: the model has no defined input (build it on a keras.Input)") from None
    if len(inputs) != 1 or len(outputs) != 1:
        raise KerasImportError(
            f"{source}: the model has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier has one of each"
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise KerasImportError(f"{source}: the model input has shape {shape}; expected (batch, height, width, channels)")
    if shape[-1] in (1, 3):
        channels_last, (h, w, c) = True, shape[1:]
    elif shape[1] in (1, 3):
        channels_last, (c, h, w) = False, shape[1:]
    else:
        raise KerasImportError(f"{source}: the model input {shape} has no 1- or 3-channel axis; not an image model")
    if h != w:
        raise KerasImportError(f"{source}: the model takes {h}x{w} images; imgclf packages take square inputs")
    out_shape = tuple(outputs[0].shape)
    if len(out_shape) != 2 or not out_shape[1]:
        raise KerasImportError(
            f"{source}: the model outputs shape {out_shape}, not (batch, classes); "
            "add pooling and a classification head (e.g. include_top=False bases need pooling='avg' and a Dense layer)"
        )
    return ModelIO(channels_last, int(c), None if h is None else int(h), int(out_shape[1]))


def resolve_spec(io: ModelIO, base: DetectedBase | None, rescaling: str | None, source: str, *,
                 overrides: dict[str, Any] | None = None, caffe: bool = False) -> tuple[PreprocessSpec, str]:
    """The package's preprocessing and where it came from: the model's own rescaling layers, the
    Keras application it is built on, or the command line (which always wins)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(SPEC_FIELDS)
    if unknown:
        raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
    size = overrides.pop("input_size", None)
    if io.size is not None and size is not None and size != io.size:
        raise KerasImportError(f"{source}: the model takes {io.size}x{io.size} images; --size {size} does not fit")
    size = io.size or size or (base.default_size if base else None)
    if size is None:
        raise KerasImportError(f"{source}: the model accepts any image size; choose one with --size")
    if caffe:
        spec, origin = caffe_spec(size), "Keras 'caffe' mode (--caffe)"
    elif rescaling is not None:
        spec, origin = spec_for_mode("raw", size), f"0..255 pixels: the model rescales them itself ('{rescaling}')"
    elif base is not None:
        spec, origin = spec_for_mode(base.base.mode, size), f"{base.base.name} '{base.base.mode}' mode"
    elif _VALUE_FIELDS & set(overrides):
        spec, origin = spec_for_mode("torch", size), "the command line"
    else:
        raise KerasImportError(
            f"{source}: cannot tell the model's preprocessing (it is not built on a known keras.applications "
            "model and has no Rescaling layer); give it with --scale/--mean/--std (e.g. --scale 0.00392156862745098 "
            "--mean 0 0 0 --std 1 1 1 for 0..1 pixels) or --caffe"
        )
    if overrides:
        origin += " with " + ", ".join(f"{k}={v}" for k, v in overrides.items()) + " from the command line"
        spec = dataclasses.replace(spec, **overrides)
    if io.channels == 1:
        spec = dataclasses.replace(spec, grayscale=True, mean=spec.mean[:1], std=spec.std[:1], channel_order="RGB")
    return spec, origin


def output_mapping(activation: str | None, classes: int, output_kind: OutputKind | None,
                   source: str) -> tuple[OutputKind | None, str | None]:
    """(output kind or None to probe, binary head mapping or None).

    A one-unit binary head (``Dense(1, "sigmoid")`` or a logit) becomes two classes, so the
    package answers with both labels: probabilities ``[1 - p, p]`` or logits ``[0, z]``.
    """
    if classes == 1:
        if output_kind == "probabilities" or (output_kind is None and activation == "sigmoid"):
            return "probabilities", "sigmoid"
        if output_kind == "logits" or (output_kind is None and activation == "linear"):
            return "logits", "logit"
        raise KerasImportError(
            f"{source}: a one-unit output with activation {activation!r} is not a classifier imgclf can serve; "
            "give --output-kind probabilities (sigmoid) or logits"
        )
    if output_kind is not None:
        return output_kind, None
    if activation in ("softmax", "sigmoid"):
        return "probabilities", None
    if activation == "linear":
        return "logits", None
    return None, None


def nchw_module(model: Any, *, channels_last: bool, binary: str | None) -> Any:
    """A torch module taking imgclf's NCHW float32 input and returning (batch, classes)."""
    import torch

    class KerasClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = x.permute(0, 2, 3, 1)
            y = self.model(x, training=False)
            if binary == "sigmoid":
                y = torch.cat([1.0 - y, y], dim=1)
            elif binary == "logit":
                y = torch.cat([torch.zeros_like(y), y], dim=1)
            return y

    return KerasClassifier().eval()


def model_name(path: Path) -> str:
    """The package name a Keras file gets unless one is given: its file name, made a valid name."""
    return package_name(path.stem, "keras-model")


def _labels_for(classes: int, labels: list[str] | None, source: str) -> tuple[list[str], str]:
    if labels is not None:
        if len(labels) != classes:
            raise KerasImportError(f"{source}: the model has {classes} classes, but {len(labels)} labels were given")
        return list(labels), "given"
    if classes == 1000:
        from imgclf.zoo.labels import get_labels

        return list(get_labels("imagenet")), "imagenet"
    raise KerasImportError(
        f"{source}: the model has {classes} classes; name them, one per line in output order, with --labels FILE "
        f"or in {Path(source).stem}.labels.txt beside the model (Keras' image_dataset_from_directory and "
        "flow_from_directory order classes by folder name)"
    )


def import_keras(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    labels: list[str] | None = None,
    name: str | None = None,
    version: str = "1",
    overrides: dict[str, Any] | None = None,
    caffe: bool = False,
    output_kind: OutputKind | None = None,
    check_image: Any = None,
) -> KerasImportReport:
    """Turn a whole Keras model file into a model package at ``out_dir``.

    ``labels``: class names in output order; None for a 1000-way ImageNet head. ``overrides``:
    :class:`PreprocessSpec` fields that replace the detected ones (``caffe`` selects Keras' caffe
    mode). The package is written only after ONNX Runtime agrees with Keras on a real photo.
    """
    kfile = read_keras_file(path)
    source = kfile.path.name
    model = load_keras_model(kfile)
    io = model_io(model, source)
    base = detect_base(model)
    spec, origin = resolve_spec(io, base, input_rescaling_layer(model), source, overrides=overrides, caffe=caffe)
    activation = final_activation(model)
    kind, binary = output_mapping(activation, io.classes, output_kind, source)
    classes = 2 if binary else io.classes
    label_list, label_source = _labels_for(classes, labels, source)
    module = nchw_module(model, channels_last=io.channels_last, binary=binary)

    from imgclf.export import OPSET, verify_onnx
    from imgclf.package import write_package

    if check_image is None:
        check_image = check_photo()
    try:
        reference = run_module(module, spec, check_image)
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises on a layer it cannot run
        raise KerasImportError(f"{source}: the model does not run on a {spec.input_size}px image: "
                               f"{first_line(exc)}") from None
    if kind is None:
        # An output layer without a telling activation: a softmax output sums to one.
        sums_to_one = bool(np.all(reference >= 0) and np.allclose(reference.sum(axis=1), 1.0, atol=1e-3))
        kind = "probabilities" if sums_to_one else "logits"
    output_name = "probabilities" if kind == "probabilities" else "logits"
    with tempfile.TemporaryDirectory(prefix="imgclf-keras-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_model(module, spec, onnx_path, output_name, source)
        try:
            diff, top_keras, top_onnx, _scale = verify_onnx(module, onnx_path, spec, check_image)
            diff = max(diff, batch_size_check(module, onnx_path, spec, check_image))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are long; one line is enough
            raise KerasImportError(f"{source}: the exported ONNX model does not run: {first_line(exc)}") from None
        tolerance = 1e-3 * max(1.0, float(np.abs(reference).max()))
        top2 = np.sort(reference[0])[-2:]
        # The top-1 class must agree unless Keras itself has a near-tie (an untrained binary head).
        decided = top2.size < 2 or top2[1] - top2[0] > tolerance
        if diff > tolerance or (decided and top_keras != top_onnx):
            raise KerasImportError(
                f"{source}: ONNX Runtime disagrees with Keras (max abs diff {diff:.3g}, top-1 {top_onnx} vs {top_keras})"
            )
        provenance = Provenance(
            architecture=f"keras:{base.variant if base else model.name}",
            task="import",
            source=source,
            weights=source,
            export_check={"max_abs_diff": diff, "onnx_opset": OPSET},
            extra={
                "source_sha256": sha256_file(kfile.path),
                "source_format": "keras" if kfile.format == "keras" else "hdf5",
                "saved_by_keras": kfile.keras_version,
                "saved_backend": kfile.backend,
                "keras_version": load_keras().__version__,
                "base": base.base.name if base else None,
                "preprocessing": origin,
                "output_activation": activation,
                "binary_head": binary,
                "labels": label_source,
            },
        )
        meta = PackageMeta(name=name or model_name(kfile.path), labels=label_list, preprocess=spec,
                           version=version, output_name=output_name, output_kind=kind, provenance=provenance)
        package = write_package(out_dir, onnx_path, meta)
    return KerasImportReport(package, base.base.name if base else None, origin, activation, diff)
