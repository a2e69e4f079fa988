"""Reading Keras HDF5 files: the weights-only layout of the Keras-applications files
(``model.save_weights()``: layer groups at the root) and whole models (``model.save()``: the same
under ``model_weights``, the architecture in the ``model_config`` attribute)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.zoo.weights import WeightsError

if TYPE_CHECKING:
    import h5py


@dataclass
class KerasH5:
    """What a Keras HDF5 file holds: layer name -> weight arrays (Keras order), in file order."""

    path: Path
    layers: dict[str, list[np.ndarray]]
    weight_names: dict[str, list[str]]
    model_config: dict | None  # set for a whole model saved with model.save()

    @property
    def whole_model(self) -> bool:
        return self.model_config is not None


def _attr_strings(node: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute; Keras splits long ones into ``name0``, ``name1``, ..."""
    if name in node.attrs:
        chunks = [node.attrs[name]]
    else:
        chunks, i = [], 0
        while f"{name}{i}" in node.attrs:
            chunks.append(node.attrs[f"{name}{i}"])
            i += 1
    out: list[str] = []
    for chunk in chunks:
        for v in np.atleast_1d(chunk):
            if isinstance(v, bytes):
                out.append(v.decode("utf8"))
            elif isinstance(v, str):
                out.append(v)
            # An empty list is stored as an empty float array: nothing to add.
    return out


def _datasets(group: h5py.Group) -> dict[str, np.ndarray]:
    import h5py

    found: dict[str, np.ndarray] = {}
    group.visititems(lambda n, obj: found.update({n: np.asarray(obj)}) if isinstance(obj, h5py.Dataset) else None)
    return found


def _model_config(f: h5py.File) -> dict | None:
    raw = f.attrs.get("model_config")
    if raw is None:
        return {} if "model_weights" in f else None
    try:
        config = json.loads(raw.decode("utf8") if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def read_keras_weights(path: str | Path) -> KerasH5:
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"cannot read {path.name} as a Keras HDF5 weights file: {exc}") from None
    with f:
        config = _model_config(f)
        root = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else f
        backend = root.attrs.get("backend", b"tensorflow")
        backend = backend.decode() if isinstance(backend, bytes) else str(backend)
        if backend == "theano":
            raise WeightsError(f"{path.name} holds Theano-ordered kernels; use the *_tf_dim_ordering_tf_kernels file")
        names = _attr_strings(root, "layer_names")
        if not names:
            if "layers" in root or "vars" in root:
                raise WeightsError(
                    f"{path.name} is in the Keras 3 '.weights.h5' format; save the model with "
                    "model.save('model.h5') (HDF5) and pass that file"
                )
            names = [n for n in root.keys() if n != "top_level_model_weights"]
        layers: dict[str, list[np.ndarray]] = {}
        weight_names: dict[str, list[str]] = {}
        for name in names:
            group = root.get(name)
            if not isinstance(group, h5py.Group):
                raise WeightsError(f"{path.name} lists layer {name!r} but holds no weights for it")
            wnames = _attr_strings(group, "weight_names")
            try:
                if wnames:
                    arrays = [np.asarray(group[w]) for w in wnames]
                else:
                    found = _datasets(group)
                    wnames, arrays = list(found), list(found.values())
            except (KeyError, OSError, ValueError) as exc:  # a weight the layer lists is absent or unreadable
                raise WeightsError(f"{path.name} is damaged: cannot read the weights of layer {name!r} ({exc})") from None
            if arrays:
                layers[name], weight_names[name] = arrays, wnames
    return KerasH5(path, layers, weight_names, config)


def read_keras_layers(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays (Keras order: kernel, then bias), for layers with weights."""
    return read_keras_weights(path).layers
