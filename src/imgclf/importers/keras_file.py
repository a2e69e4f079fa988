"""Read a Keras model file's saved architecture without Keras, and refuse what imgclf cannot import.

Both whole-model formats are read: legacy HDF5 (``model.save("model.h5")`` in tf.keras 2 and
Keras 3; the architecture is the ``model_config`` attribute) and the Keras 3 ``.keras`` archive
(a zip with ``config.json``). Reading the JSON first lets imgclf name the layer it cannot take
(a ``Lambda`` with Python code, a custom layer whose class is not in the file) before Keras runs
anything from the file: loading never executes code from it.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imgclf.errors import UserError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
# config.json of the largest Keras applications is a few MB; anything far bigger is not a model.
MAX_CONFIG_BYTES = 64 << 20
# Layer classes every Keras model may hold that are not in ``keras.layers``.
MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})


class KerasImportError(UserError, ValueError):
    """A Keras model file imgclf cannot import, with the reason in one line."""


@dataclass(frozen=True)
class KerasFile:
    path: Path
    format: Literal["h5", "keras"]
    config: dict[str, Any]  # the model's serialized architecture ({"class_name": ..., "config": ...})
    keras_version: str | None  # the Keras that saved the file
    backend: str | None  # the backend it was saved from (HDF5 files record it)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf8", "replace") if isinstance(value, bytes) else str(value)


def _parse(raw: str | bytes, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KerasImportError(f"{path.name}: the saved model architecture is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise KerasImportError(f"{path.name}: the saved model architecture is not a Keras model config")
    return config


def _read_h5(path: Path) -> KerasFile:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise KerasImportError(f"{path.name}: cannot read it as HDF5 ({exc})") from None
    with f:
        attrs = f.attrs
        if "model_config" not in attrs:
            raise KerasImportError(
                f"{path.name} holds weights only, no model architecture: save the whole model with "
                "model.save('model.keras'), or load a Keras-applications weights file into a zoo model "
                "with --model NAME --weights FILE"
            )
        return KerasFile(path, "h5", _parse(attrs["model_config"], path),
                         _text(attrs.get("keras_version")), _text(attrs.get("backend")))


def _read_zip(path: Path) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise KerasImportError(f"{path.name} is a zip archive without config.json; not a .keras model")
            if z.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise KerasImportError(f"{path.name}: config.json is too large to be a model architecture")
            config = _parse(z.read("config.json"), path)
            version = None
            if "metadata.json" in names and z.getinfo("metadata.json").file_size < 1 << 20:
                try:
                    version = _text(json.loads(z.read("metadata.json")).get("keras_version"))
                except (json.JSONDecodeError, AttributeError):
                    version = None
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasImportError(f"{path.name}: cannot read it as a .keras archive ({exc})") from None
    return KerasFile(path, "keras", config, version, None)


def read_keras_file(path: str | Path) -> KerasFile:
    """The architecture, format and saving Keras version of a whole-model Keras file."""
    p = Path(path)
    if not p.is_file():
        raise KerasImportError(f"Keras model file not found: {p}")
    with open(p, "rb") as f:
        head = f.read(8)
    if head == HDF5_MAGIC:
        return _read_h5(p)
    if head.startswith(ZIP_MAGIC):
        return _read_zip(p)
    raise KerasImportError(f"{p.name} is not a Keras model file (neither HDF5 nor a .keras archive)")


def iter_layers(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every serialized layer in a model config, nested models' layers included."""
    inner = config.get("config")
    # Keras <= 2.2 stored a Sequential's config as the bare list of its layers.
    layers = inner.get("layers") if isinstance(inner, dict) else inner if isinstance(inner, list) else None
    for layer in layers or ():
        if isinstance(layer, dict) and "class_name" in layer:
            yield layer
            yield from iter_layers(layer)
    wrapped = inner.get("layer") if isinstance(inner, dict) else None  # TimeDistributed, Bidirectional
    if isinstance(wrapped, dict) and "class_name" in wrapped:
        yield wrapped
        yield from iter_layers(wrapped)


def layer_name(layer: dict[str, Any]) -> str:
    inner = layer.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return str(name or layer.get("name") or "?")


def _why_unsupported(layer: dict[str, Any], is_keras_layer: Callable[[str], bool]) -> str | None:
    cls = str(layer.get("class_name"))
    module = layer.get("module")
    registered = layer.get("registered_name")
    if cls == "Lambda":
        return ("is a Lambda layer holding Python code, which imgclf neither runs nor exports; "
                "replace it with a standard layer (e.g. Rescaling) and save the model again")
    if cls in ("TFOpLambda", "SlicingOpLambda"):
        return ("is a TensorFlow operation recorded by tf.keras, which Keras 3 cannot load; "
                "replace it with a standard Keras layer and save the model again")
    custom = (isinstance(module, str) and module.split(".")[0] != "keras") or (
        isinstance(registered, str) and registered != cls)
    if custom or not (cls in MODEL_CLASSES or is_keras_layer(cls)):
        return (f"is a custom layer (class {registered or cls}) whose code is not in the file; imgclf imports "
                "models built from standard Keras layers")
    return None


def check_layers(kfile: KerasFile, is_keras_layer: Callable[[str], bool]) -> None:
    """Raise :class:`KerasImportError` naming the first layer imgclf cannot import."""
    bad = [(layer, why) for layer in iter_layers(kfile.config)
           if (why := _why_unsupported(layer, is_keras_layer)) is not None]
    if bad:
        layer, why = bad[0]
        more = f" (and {len(bad) - 1} more unsupported layer(s))" if len(bad) > 1 else ""
        raise KerasImportError(f"{kfile.path.name}: layer '{layer_name(layer)}' {why}{more}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: exporters and runtimes write pages; a user needs one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
