"""Load Keras-applications ``.h5`` weights (VGG16/19, ResNet50, InceptionV3, Xception, MobileNetV2)
into this project's torch models.

What differs between a Keras model and its torch twin, and where each difference is handled:

* array layouts (here, :func:`convert_layer`): conv kernels ``(kh, kw, in, out)`` -> ``(out, in, kh,
  kw)``; depthwise kernels ``(kh, kw, in, mult)`` -> ``(in * mult, 1, kh, kw)``; dense kernels
  ``(in, out)`` -> ``(out, in)``; a dense layer after ``Flatten`` gets its rows reordered from NHWC
  ``(h, w, c)`` to NCHW ``(c, h, w)``; a batch norm without a scale (``scale=False``) gets ones;
* architecture (the family module's Keras variant, :attr:`KerasLayout.build`): conv biases, batch
  norm epsilons, TF's asymmetric 'same' padding, pools that exclude the padding;
* input (:attr:`KerasLayout.preprocess`): the weights expect Keras' ``preprocess_input`` ("caffe"
  BGR mean subtraction or "tf" [-1, 1]) after ``load_img``'s squash resize. The spec travels with
  the weights into the exported package's ``model.json``, as torchvision's ``Weights`` carry their
  transforms.

Layers are matched by name. Keras gives some layers no name of their own (``conv2d_7``,
``batch_normalization_7``: every InceptionV3 layer, Xception's shortcut convolutions); those are
matched per kind in creation order, which the counter in the name records whatever the order of
``layer_names`` (Keras lists layers by graph depth, not as created).

Both HDF5 layouts Keras 1/2 write are read: ``model.save_weights()`` (the applications files,
layer groups at the root) and ``model.save()`` (the same under ``model_weights``). A whole model
that does not fit (a fine-tuned model with its own head) is pointed at ``imgclf import``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from imgclf.preprocess import PreprocessSpec
from imgclf.zoo.weights import WeightsError

if TYPE_CHECKING:
    import h5py
    import torch

    from imgclf.zoo.registry import ZooEntry

LayerKind = Literal["conv", "dense", "bn", "depthwise", "separable"]

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def tf_spec(input_size: int) -> PreprocessSpec:
    """Keras-applications "tf" preprocessing (Inception, Xception, MobileNet): ``load_img``'s
    nearest squash resize, then ``x / 127.5 - 1``."""
    return PreprocessSpec(input_size=input_size, crop_pct=1.0, resize_mode="squash", interpolation="nearest",
                          mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), scale=1.0)


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer with weights and the torch module it fills."""

    name: str | None  # None: auto-named by Keras (conv2d_7), matched per kind in creation order
    kind: LayerKind
    module: str  # torch module path; a separable conv fills ``<module>.conv1`` and ``<module>.pointwise``
    top: bool = False  # classifier layer: absent from include_top=False ('notop') files
    flatten_hwc: tuple[int, int, int] | None = None  # dense layer after Flatten of this NHWC map


@dataclass(frozen=True)
class KerasFile:
    """A weights file Keras publishes for a model."""

    filename: str
    url: str
    include_top: bool = True


@dataclass(frozen=True)
class KerasLayout:
    """How a Keras application maps onto a zoo model (stored in ``ZooEntry.extra["keras"]``)."""

    layers: tuple[KerasLayer, ...]  # every layer with weights, in the Keras model's creation order
    preprocess: PreprocessSpec  # the input the Keras weights expect
    build: Callable[[], torch.nn.Module] | None = None  # the Keras variant; None: the entry's builder
    files: tuple[KerasFile, ...] = ()
    # The input size a file name states (MobileNetV2 ..._1.0_160.h5), if any.
    size_from_filename: Callable[[str], int | None] | None = field(default=None, compare=False)

    def layer_names(self, include_top: bool = True) -> list[str]:
        return [k.name for k in self.layers if k.name and (include_top or not k.top)]

    def spec_for(self, path: str | Path | None) -> PreprocessSpec:
        size = self.size_from_filename(Path(path).name) if path and self.size_from_filename else None
        return self.preprocess.with_size(size) if size else self.preprocess


def keras_layout(entry: ZooEntry) -> KerasLayout:
    layout = entry.extra.get("keras")
    if not isinstance(layout, KerasLayout):
        raise WeightsError(f"{entry.name} cannot load Keras .h5 weights; models that can: {', '.join(keras_able())}")
    return layout


def keras_able() -> list[str]:
    from imgclf.zoo.registry import entries

    return [e.name for e in entries() if isinstance(e.extra.get("keras"), KerasLayout)]


def keras_preprocess(entry: ZooEntry, path: str | Path | None = None) -> PreprocessSpec:
    """The preprocessing a model running Keras weights needs (e.g. caffe mode for VGG/ResNet50)."""
    return keras_layout(entry).spec_for(path)


# ---------------------------------------------------------------- reading the HDF5 file

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


def read_keras_file(path: str | Path) -> KerasH5:
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
            if wnames:
                arrays = [np.asarray(group[w]) for w in wnames]
            else:
                found = _datasets(group)
                wnames, arrays = list(found), list(found.values())
            if arrays:
                layers[name], weight_names[name] = arrays, wnames
    return KerasH5(path, layers, weight_names, config)


def read_keras_layers(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Layer name -> its weight arrays (Keras order: kernel, then bias), for layers with weights."""
    return read_keras_file(path).layers


# ---------------------------------------------------------------- matching file layers to the layout

# Keras 2/3 auto names (and Keras 1's) per kind: conv2d, conv2d_1, ... in creation order.
_AUTO_BASES: dict[str, tuple[str, ...]] = {
    "conv": ("conv2d", "convolution2d"),
    "bn": ("batch_normalization", "batchnormalization"),
    "dense": ("dense",),
    "depthwise": ("depthwise_conv2d",),
    "separable": ("separable_conv2d", "separableconv2d"),
}
_AUTO_NAME = re.compile(r"^(?P<base>[a-z0-9_]+?)(?:_(?P<n>\d+))?$")


def _auto_order(name: str, kind: str) -> int | None:
    """Creation index of an auto-named layer of ``kind`` (``conv2d`` -> 0, ``conv2d_7`` -> 7), else None."""
    m = _AUTO_NAME.match(name)
    if not m or m["base"] not in _AUTO_BASES[kind]:
        return None
    return int(m["n"] or 0)


def _list(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + ("..." if len(names) > n else "")


def _whole_model_error(h5: KerasH5, layout: KerasLayout, model: str, why: str) -> WeightsError:
    """A whole saved model that is not this zoo model: it carries its own architecture, so it
    becomes a package through ``imgclf import``, not through a zoo entry."""
    config = h5.model_config or {}
    cfg = config.get("config") if isinstance(config.get("config"), dict) else {}
    keras_name = cfg.get("name") or config.get("class_name") or "model"
    what = f"a whole Keras model ({keras_name!r})"
    last = list(h5.layers.items())[-1] if h5.layers else None
    tops = {k.name for k in layout.layers if k.top}
    if last is not None and last[1] and last[1][0].ndim == 2 and last[0] not in tops:
        what = (f"a whole Keras model ({keras_name!r}) with its own head ({last[0]!r}, "
                f"{last[1][0].shape[-1]} outputs)")
    name = h5.path.name
    return WeightsError(
        f"{name} is {what}, not {model} weights ({why}); "
        f"turn it into a model package with: imgclf import {name} --labels labels.txt --out DIR"
    )


def match_layers(h5: KerasH5, layout: KerasLayout, model: str, *, include_top: bool = True
                 ) -> list[tuple[KerasLayer, str]]:
    """Pair every layout layer with the file layer holding its weights; any mismatch is an error."""
    name = h5.path.name
    wanted = [k for k in layout.layers if include_top or not k.top]
    named = {k.name for k in wanted if k.name}
    skipped = {k.name for k in layout.layers if k.top and not include_top and k.name}
    missing = [n for n in layout.layer_names(include_top) if n not in h5.layers]
    leftover = [n for n in h5.layers if n not in named and n not in skipped]
    pairs: list[tuple[KerasLayer, str]] = [(k, k.name) for k in wanted if k.name and k.name in h5.layers]
    for kind in _AUTO_BASES:
        want = [k for k in wanted if k.name is None and k.kind == kind]
        if not want:
            continue
        have = sorted((o, n) for n in leftover if (o := _auto_order(n, kind)) is not None)
        if len(have) != len(want):
            if h5.whole_model:
                raise _whole_model_error(h5, layout, model, f"{len(have)} {kind} layers where {len(want)} are expected")
            raise WeightsError(f"{name} does not fit {model}: {len(have)} unnamed {kind} layers "
                               f"({_list([n for _, n in have])}), expected {len(want)}")
        pairs += [(k, n) for k, (_, n) in zip(want, have, strict=True)]
        used = {n for _, n in have}
        leftover = [n for n in leftover if n not in used]
    if not missing and not leftover:
        return pairs
    if h5.whole_model:
        why = f"unexpected layers {_list(leftover)}" if leftover else f"missing layers {_list(missing)}"
        raise _whole_model_error(h5, layout, model, why)
    tops = {k.name for k in layout.layers if k.top}
    if missing and set(missing) <= tops:
        if leftover:
            raise WeightsError(
                f"{name} holds a {model} base with its own classifier layers ({_list(leftover)}) instead of "
                f"the ImageNet head; save the whole model with model.save('model.h5') and run: imgclf import "
                "model.h5 --labels labels.txt --out DIR"
            )
        raise WeightsError(
            f"{name} has no classifier layers ({', '.join(missing)}): it is an include_top=False "
            "('notop') file, which cannot classify"
        )
    if missing:
        raise WeightsError(f"{name} does not fit {model}: missing Keras layers {_list(missing)} "
                           f"(file has: {', '.join(list(h5.layers)[:6])}...)")
    raise WeightsError(f"{name} does not fit {model}: unexpected Keras layers {_list(leftover)}")


# ---------------------------------------------------------------- converting arrays

def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _kernels_and_bias(arrays: list[np.ndarray], layer: str, ndim: int, n_kernels: int
                      ) -> tuple[list[np.ndarray], np.ndarray | None]:
    kernels = [a for a in arrays if a.ndim == ndim]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != n_kernels or len(biases) > 1 or len(kernels) + len(biases) != len(arrays):
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        what = f"{n_kernels} {ndim}-D kernel{'s' if n_kernels > 1 else ''} and an optional bias"
        raise WeightsError(f"Keras layer {layer!r} should hold {what}, found {shapes}")
    return [_f32(k) for k in kernels], (_f32(biases[0]) if biases else None)


def _bn(arrays: list[np.ndarray], wnames: list[str], layer: str) -> dict[str, np.ndarray]:
    """Batch norm arrays in Keras order: [gamma], [beta], moving_mean, moving_variance."""
    if any(a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1 or not 2 <= len(arrays) <= 4:
        shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
        raise WeightsError(f"Keras layer {layer!r} should hold batch-norm vectors, found {shapes}")
    short = [w.rsplit("/", 1)[-1].split(":")[0] for w in wnames]
    n = len(arrays)
    has_gamma = "gamma" in short if any(s in ("gamma", "beta") for s in short) else n == 4
    has_beta = "beta" in short if any(s in ("gamma", "beta") for s in short) else n >= 3
    if 2 + has_gamma + has_beta != n:
        raise WeightsError(f"Keras layer {layer!r}: cannot tell its batch-norm vectors apart ({', '.join(short)})")
    it = iter(_f32(a) for a in arrays)
    gamma = next(it) if has_gamma else None
    beta = next(it) if has_beta else None
    mean, var = next(it), next(it)
    return {
        "weight": gamma if gamma is not None else np.ones_like(mean),  # scale=False: gamma is 1
        "bias": beta if beta is not None else np.zeros_like(mean),
        "running_mean": mean,
        "running_var": var,
    }


def convert_layer(layer: KerasLayer, arrays: list[np.ndarray], wnames: list[str], file_layer: str
                  ) -> dict[str, np.ndarray]:
    """One Keras layer's arrays -> the torch state-dict entries of ``layer.module``."""
    m = layer.module
    if layer.kind == "bn":
        return {f"{m}.{k}": v for k, v in _bn(arrays, wnames, file_layer).items()}
    out: dict[str, np.ndarray] = {}
    if layer.kind == "dense":
        (kernel,), bias = _kernels_and_bias(arrays, file_layer, 2, 1)
        if layer.flatten_hwc is not None:
            h, w, c = layer.flatten_hwc
            if kernel.shape[0] != h * w * c:
                raise WeightsError(
                    f"Keras layer {file_layer!r} takes {kernel.shape[0]} inputs, expected {h}x{w}x{c} = "
                    f"{h * w * c} (weights for another input size?)"
                )
            # Rows are in NHWC-flatten order (h, w, c); torch flattens NCHW (c, h, w).
            kernel = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, h * w * c)
        else:
            kernel = kernel.T
        out[f"{m}.weight"] = kernel
    elif layer.kind == "conv":
        (kernel,), bias = _kernels_and_bias(arrays, file_layer, 4, 1)
        out[f"{m}.weight"] = kernel.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
    elif layer.kind == "depthwise":
        (kernel,), bias = _kernels_and_bias(arrays, file_layer, 4, 1)
        out[f"{m}.weight"] = _depthwise(kernel)
    elif layer.kind == "separable":
        (depthwise, pointwise), bias = _kernels_and_bias(arrays, file_layer, 4, 2)
        out[f"{m}.conv1.weight"] = _depthwise(depthwise)
        out[f"{m}.pointwise.weight"] = pointwise.transpose(3, 2, 0, 1)
        m = f"{m}.pointwise"
    else:  # pragma: no cover - the Literal covers every kind
        raise ValueError(layer.kind)
    if bias is not None:
        out[f"{m}.bias"] = bias
    return out


def _depthwise(kernel: np.ndarray) -> np.ndarray:
    # (kh, kw, in, mult) -> (in * mult, 1, kh, kw); output channel c * mult + m, as in torch's groups=in.
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]


def keras_to_torch(h5: KerasH5 | dict[str, list[np.ndarray]], layout: KerasLayout, model: str = "the model",
                   *, include_top: bool = True) -> dict[str, np.ndarray]:
    """Keras layer arrays -> a state dict (numpy) in the torch model's layout."""
    if not isinstance(h5, KerasH5):
        h5 = KerasH5(Path("weights.h5"), h5, {}, None)
    state: dict[str, np.ndarray] = {}
    for layer, file_layer in match_layers(h5, layout, model, include_top=include_top):
        state.update(convert_layer(layer, h5.layers[file_layer], h5.weight_names.get(file_layer, []), file_layer))
    return {k: np.ascontiguousarray(v) for k, v in state.items()}


def read_keras_h5(entry: ZooEntry, path: str | Path, *, include_top: bool = True) -> dict[str, torch.Tensor]:
    """A Keras ``.h5`` weights file -> a state dict for the Keras variant of ``entry``'s model.

    Pair the result with :func:`keras_preprocess`: the weights expect Keras' input, not the
    entry's default preprocessing. ``include_top=False`` leaves out the classifier layers (a
    'notop' file has none).
    """
    import torch

    layout = keras_layout(entry)
    state = keras_to_torch(read_keras_file(path), layout, entry.name, include_top=include_top)
    return {k: torch.from_numpy(v) for k, v in state.items()}
