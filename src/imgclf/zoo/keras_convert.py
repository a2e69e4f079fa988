"""Pairing a Keras file's layers with a layout and converting their arrays to torch's layouts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from imgclf.zoo.keras_h5 import KerasH5
from imgclf.zoo.keras_layout import KerasLayer, KerasLayout
from imgclf.zoo.weights import WeightsError

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


def _resolve_aliases(layout: KerasLayout, h5: KerasH5) -> KerasLayout:
    """The layout with each layer under the name this file uses for it."""
    from dataclasses import replace

    def resolve(k: KerasLayer) -> KerasLayer:
        if k.name is None or k.name in h5.layers:
            return k
        found = next((a for a in k.aliases if a in h5.layers), None)
        return replace(k, name=found) if found else k

    return replace(layout, layers=tuple(resolve(k) for k in layout.layers))


def match_layers(h5: KerasH5, layout: KerasLayout, model: str, *, include_top: bool = True
                 ) -> list[tuple[KerasLayer, str]]:
    """Pair every layout layer with the file layer holding its weights; any mismatch is an error."""
    name = h5.path.name
    layout = _resolve_aliases(layout, h5)
    tops = {k.name for k in layout.layers if k.top and k.name}
    wanted = [k for k in layout.layers if include_top or not k.top]
    named = {k.name for k in wanted if k.name}
    missing = [n for n in layout.layer_names(include_top) if n not in h5.layers]
    leftover = [n for n in h5.layers if n not in named and (include_top or n not in tops)]

    def misfit(why: str) -> WeightsError:
        return _whole_model_error(h5, layout, model, why) if h5.whole_model else \
            WeightsError(f"{name} does not fit {model}: {why}")

    missing_base = [n for n in missing if n not in tops]
    if missing_base:
        raise misfit(f"missing Keras layers {_list(missing_base)} (file has: {_list(list(h5.layers), 6)})")
    pairs: list[tuple[KerasLayer, str]] = [(k, k.name) for k in wanted if k.name and k.name in h5.layers]
    for kind in _AUTO_BASES:
        want = [k for k in wanted if k.name is None and k.kind == kind]
        if not want:
            continue
        have = sorted((o, n) for n in leftover if (o := _auto_order(n, kind)) is not None)
        if len(have) != len(want):
            raise misfit(f"{len(have)} auto-named {kind} layers ({_AUTO_BASES[kind][0]}_N), expected {len(want)} "
                         f"(file has: {_list(list(h5.layers), 6)})")
        pairs += [(k, n) for k, (_, n) in zip(want, have, strict=True)]
        used = {n for _, n in have}
        leftover = [n for n in leftover if n not in used]
    if not missing and not leftover:
        return pairs
    if h5.whole_model:
        why = f"unexpected layers {_list(leftover)}" if leftover else f"no layers {_list(missing)}"
        raise _whole_model_error(h5, layout, model, why)
    if missing and leftover:
        raise WeightsError(
            f"{name} holds a {model} base with its own classifier layers ({_list(leftover)}) instead of "
            f"the ImageNet head; save the whole model with model.save('model.h5') and run: imgclf import "
            "model.h5 --labels labels.txt --out DIR"
        )
    if missing:
        with_top = next((f.filename for f in layout.files if f.include_top), None)
        hint = f"; the file with the classifier is {with_top}" if with_top else ""
        raise WeightsError(
            f"{name} has no classifier layers ({', '.join(missing)}): it is an include_top=False "
            f"('notop') file, which cannot classify{hint}"
        )
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
