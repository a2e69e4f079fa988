"""Import Keras-applications ``.h5`` weights (VGG16, VGG19) into this project's torch layout.

What differs between a Keras model and its torch twin, and how each difference is handled:

* conv kernels are ``(kh, kw, in, out)`` -> transposed to ``(out, in, kh, kw)``;
  dense kernels are ``(in, out)`` -> transposed to ``(out, in)``;
* Keras flattens NHWC feature maps, torch NCHW: the rows of the first dense kernel are reordered
  from ``(h, w, c)`` to ``(c, h, w)`` order;
* the Keras weights were trained on BGR, mean-subtracted 0..255 pixels ("caffe" mode) and a squash
  resize: rather than touching the weights, the model gets that preprocessing spec
  (:func:`keras_preprocess`), which then travels into the exported package's ``model.json``.

Both HDF5 layouts Keras 1/2 write are read: ``model.save_weights()`` (the applications files,
layer groups at the root) and ``model.save()`` (the same under ``model_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.weights import WeightsError

if TYPE_CHECKING:
    import h5py
    import torch

    from imgclf.zoo.registry import ZooEntry


@dataclass(frozen=True)
class KerasLayout:
    """How a Keras model's layers map onto a zoo model (stored in ``ZooEntry.extra["keras"]``)."""

    convs: tuple[tuple[str, str], ...]  # (Keras Conv2D layer name, torch module path), in order
    dense: tuple[tuple[str, str], ...]  # (Keras Dense layer name, torch module path); first follows Flatten
    flatten_hwc: tuple[int, int, int]  # feature map shape Keras flattens before the first dense layer
    preprocess: PreprocessSpec  # the input the Keras weights expect

    def layer_names(self) -> list[str]:
        return [k for k, _ in self.convs + self.dense]


def keras_layout(entry: ZooEntry) -> KerasLayout:
    layout = entry.extra.get("keras")
    if not isinstance(layout, KerasLayout):
        from imgclf.zoo.registry import entries

        able = ", ".join(e.name for e in entries() if isinstance(e.extra.get("keras"), KerasLayout))
        raise WeightsError(f"{entry.name} cannot load Keras .h5 weights; models that can: {able}")
    return layout


def keras_preprocess(entry: ZooEntry) -> PreprocessSpec:
    """The preprocessing a model running Keras weights needs (Keras VGG: caffe mode, 224 squash)."""
    return keras_layout(entry).preprocess


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


def _datasets(group: h5py.Group) -> list[np.ndarray]:
    import h5py

    found: list[np.ndarray] = []
    group.visititems(lambda _, obj: found.append(np.asarray(obj)) if isinstance(obj, h5py.Dataset) else None)
    return found


def read_keras_layers(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays (Keras order: kernel, then bias), for layers with weights."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"cannot read {path.name} as a Keras HDF5 weights file: {exc}") from None
    with f:
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
            names = list(root.keys())
        layers: dict[str, list[np.ndarray]] = {}
        for name in names:
            group = root.get(name)
            if not isinstance(group, h5py.Group):
                raise WeightsError(f"{path.name} lists layer {name!r} but holds no weights for it")
            weight_names = _attr_strings(group, "weight_names")
            arrays = [np.asarray(group[w]) for w in weight_names] if weight_names else _datasets(group)
            if arrays:
                layers[name] = arrays
    return layers


def _kernel_and_bias(layers: dict[str, list[np.ndarray]], name: str, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = layers[name]
    kernels = [a for a in arrays if a.ndim == ndim]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1 or len(arrays) != 2:
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        raise WeightsError(f"Keras layer {name!r} should hold a {ndim}-D kernel and a bias, found {shapes}")
    return kernels[0].astype(np.float32, copy=False), biases[0].astype(np.float32, copy=False)


def keras_to_torch(layers: dict[str, list[np.ndarray]], layout: KerasLayout) -> dict[str, np.ndarray]:
    """Keras layer arrays -> a state dict (numpy) in the torch model's layout."""
    state: dict[str, np.ndarray] = {}
    for name, module in layout.convs:
        kernel, bias = _kernel_and_bias(layers, name, 4)
        state[f"{module}.weight"] = kernel.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        state[f"{module}.bias"] = bias
    h, w, c = layout.flatten_hwc
    for i, (name, module) in enumerate(layout.dense):
        kernel, bias = _kernel_and_bias(layers, name, 2)
        if i == 0:
            if kernel.shape[0] != h * w * c:
                raise WeightsError(
                    f"Keras layer {name!r} takes {kernel.shape[0]} inputs, expected {h}x{w}x{c} = {h * w * c} "
                    "(weights for another input size?)"
                )
            # Rows are in NHWC-flatten order (h, w, c); torch flattens NCHW (c, h, w).
            kernel = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c)
        else:
            kernel = kernel.T
        state[f"{module}.weight"] = kernel
        state[f"{module}.bias"] = bias
    return {k: np.ascontiguousarray(v) for k, v in state.items()}


def read_keras_h5(entry: ZooEntry, path: str | Path) -> dict[str, torch.Tensor]:
    """A Keras ``.h5`` weights file -> a state dict for ``entry``'s torch model.

    Pair the result with :func:`keras_preprocess`: the weights expect Keras' input, not the
    entry's default preprocessing.
    """
    import torch

    layout = keras_layout(entry)
    path = Path(path)
    layers = read_keras_layers(path)
    wanted = layout.layer_names()
    missing = [n for n in wanted if n not in layers]
    if missing:
        dense = {n for n, _ in layout.dense}
        if set(missing) == dense:
            raise WeightsError(
                f"{path.name} has no classifier layers ({', '.join(missing)}): it is an include_top=False "
                "('notop') file, which cannot classify"
            )
        raise WeightsError(
            f"{path.name} does not fit {entry.name}: missing Keras layers {', '.join(missing[:4])}"
            f"{'...' if len(missing) > 4 else ''} (file has: {', '.join(list(layers)[:6])}...)"
        )
    extra = [n for n in layers if n not in wanted]
    if extra:
        raise WeightsError(f"{path.name} does not fit {entry.name}: unexpected Keras layers {', '.join(extra[:4])}")
    return {k: torch.from_numpy(v) for k, v in keras_to_torch(layers, layout).items()}

