"""Import a whole Keras model file (``.h5`` or ``.keras``) as an imgclf model package.

Keras 3 runs on the torch backend that imgclf already installs (no TensorFlow): the loaded model is
a ``torch.nn.Module``, so it is wrapped with a transpose from imgclf's NCHW input to Keras'
channels-last layout and exported to ONNX by the same exporter and ONNX Runtime check as the zoo.
Preprocessing and output kind are detected (:mod:`imgclf.importers.keras_detect`); command-line
flags override the preprocessing. ``imgclf serve --model model.h5`` imports once into a cache keyed
by the file's content (:func:`ensure_keras_package`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
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
from imgclf.importers.keras_file import KerasFile, KerasImportError, check_layers, read_keras_file
from imgclf.package import (
    ModelPackage,
    PackageMeta,
    Provenance,
    cache_dir,
    is_package_dir,
    load_package,
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
            raise KerasImportError(f"{kfile.path.name}: Keras cannot load the model: {_first_line(exc)}") from None


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
        check_image = _check_photo()
    try:
        reference = _run(module, spec, check_image)
    except Exception as exc:  # noqa: BLE001 - whatever Keras raises on a layer it cannot run
        raise KerasImportError(f"{source}: the model does not run on a {spec.input_size}px image: "
                               f"{_first_line(exc)}") from None
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
            diff = max(diff, _batch_size_check(module, onnx_path, spec, check_image))
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are long; one line is enough
            raise KerasImportError(f"{source}: the exported ONNX model does not run: {_first_line(exc)}") from None
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


@contextlib.contextmanager
def _silenced_output() -> Iterator[None]:
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
        with _silenced_output():
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
        raise KerasImportError(f"{source}: cannot export the model to ONNX: {_first_line(exc)}") from None
    finally:
        quiet.setLevel(level)


def _batch_size_check(module: Any, onnx_path: Path, spec: PreprocessSpec, image: Any) -> float:
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


def _check_photo() -> np.ndarray:
    """A real photo when scikit-image or scikit-learn ships one, else a fixed synthetic image."""
    from imgclf.samples import reference_photo

    try:
        return reference_photo()
    except RuntimeError:
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:320, 0:400]
        smooth = np.stack([x * 255 / 400, y * 255 / 320, (x + y) * 255 / 720], axis=-1)
        return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _as_tensor(image: Any, spec: PreprocessSpec) -> Any:
    import torch

    from imgclf.preprocess import preprocess

    return torch.from_numpy(preprocess(image, spec)[None])


def _run(module: Any, spec: PreprocessSpec, image: Any) -> Any:
    import torch

    with torch.inference_mode():
        return module(_as_tensor(image, spec)).float().numpy()



# --- imported once, served from the cache ------------------------------------------------------

LABEL_SIDECARS = ("{stem}.labels.txt", "labels.txt")


def sidecar_labels_file(path: str | os.PathLike[str]) -> Path | None:
    """``model.labels.txt`` (or ``labels.txt``) beside ``model.h5``: the class names of a served file."""
    p = Path(path)
    for pattern in LABEL_SIDECARS:
        candidate = p.with_name(pattern.format(stem=p.stem))
        if candidate.is_file():
            return candidate
    return None


def keras_cache_path(path: str | os.PathLike[str]) -> Path:
    """Where the package imported from this file lives: keyed by the file's and its labels' content."""
    p = Path(path)
    if not p.is_file():
        raise KerasImportError(f"Keras model file not found: {p}")
    h = hashlib.sha256(f"imgclf-keras-import-{IMPORTER_VERSION}\n".encode())
    h.update(sha256_file(p).encode())
    labels = sidecar_labels_file(p)
    if labels is not None:
        h.update(b"\nlabels\n" + sha256_file(labels).encode())
    # The last component is the package name, which is what `imgclf serve` shows for it.
    return cache_dir() / "keras" / h.hexdigest()[:24] / model_name(p)


def cached_keras_package(path: str | os.PathLike[str]) -> Path | None:
    """The cached package for this file, if it was imported before (needs neither Keras nor torch)."""
    target = keras_cache_path(path)
    return target if is_package_dir(target) else None


def ensure_keras_package(path: str | os.PathLike[str], *, quiet: bool = False) -> ModelPackage:
    """A package for a Keras model file: imported once, then read from the cache.

    The class names come from a labels file beside the model (``model.labels.txt`` or
    ``labels.txt``), or are ImageNet's for a 1000-way head.
    """
    target = keras_cache_path(path)
    if is_package_dir(target):
        return load_package(target)
    labels_file = sidecar_labels_file(path)
    labels = None
    if labels_file is not None:
        from imgclf.package import read_labels_file

        labels = read_labels_file(labels_file)
    if not quiet:
        # stderr: stdout may be a JSON answer (imgclf predict --json).
        print(f"importing {path} into {target} (once) ...", file=sys.stderr, flush=True)
    return import_keras(path, target, labels=labels).package
