"""fp32 ONNX -> int8 QDQ ONNX: static quantization with per-channel symmetric int8 weights and
symmetric int8 activations (what VNNI and OpenVINO's int8 kernels take), calibrated on model inputs.

Two backends write the same kind of graph (QuantizeLinear/DequantizeLinear pairs around float ops,
which ONNX Runtime and OpenVINO both run as int8):

* ``nncf`` (the default; the ``quantize`` extra): NNCF's post-training quantization, which adds bias
  correction (see :mod:`imgclf.quantize.fixes`);
* ``onnxruntime``: ONNX Runtime's own quantizer (needs only ``onnx``), MinMax calibration after
  ``quant_pre_process`` (shape inference and graph optimisation); no bias correction.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from imgclf.errors import UserError
from imgclf.quantize.accuracy import Target
from imgclf.quantize.fixes import DEFAULT_FIXES, Fixes, float_nodes, weighted_nodes

BACKENDS = ("nncf", "onnxruntime")
EXTRA_HINT = "pip install 'imgclf[quantize]'"


class QuantizeError(UserError, ValueError):
    """The model cannot be quantized as asked."""


@dataclass(frozen=True)
class QuantizeResult:
    backend: str
    fixes: Fixes
    float_nodes: tuple[str, ...]  # weighted nodes left in float (asked for, and restored by accuracy control)
    int8_tensors: int  # DequantizeLinear nodes in the written graph (weights and activations)
    per_channel_weights: int  # of them, per-channel (an axis and one scale per output channel)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "fixes": self.fixes.to_dict(), "float_nodes": list(self.float_nodes),
                "int8_tensors": self.int8_tensors, "per_channel_weights": self.per_channel_weights,
                "weights": "int8, symmetric, per channel", "activations": "int8, symmetric"}


def _require(module: str) -> Any:  # noqa: ANN401 - a module
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise QuantizeError(f"int8 quantization needs the '{module}' package: {EXTRA_HINT}") from None


def quantize_onnx(src: Path, dst: Path, inputs: npt.NDArray[np.float32], *, input_name: str,
                  backend: str = "nncf", fixes: Fixes = DEFAULT_FIXES, target: Target | None = None) -> QuantizeResult:
    """Write the int8 QDQ form of ``src`` to ``dst``, calibrated on ``inputs`` ``(N, C, S, S)``.
    With ``fixes.max_float_layers`` and a ``target`` (the nncf backend), accuracy control restores
    the most sensitive layers to float until ``target`` is met on ``inputs``."""
    if backend not in BACKENDS:
        raise QuantizeError(f"unknown quantization backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not len(inputs):
        raise QuantizeError("no calibration images")
    onnx = _require("onnx")
    model = onnx.load(str(src))
    if backend == "nncf":
        constants_as_initializers(model)
    keep = float_nodes(model, fixes)
    if backend == "nncf":
        if not _nncf(model, dst, inputs, input_name, keep, fixes, target):
            fixes = replace(fixes, max_float_layers=0)
    else:
        # ONNX Runtime's quantizer has neither bias correction nor accuracy control.
        fixes = replace(fixes, bias_correction="none", max_float_layers=0)
        _onnxruntime(src, dst, inputs, input_name, keep)
    written = onnx.load(str(dst))
    # Every int8 tensor, weight or activation, is read through a DequantizeLinear; a weight's input
    # is an int8 initializer, per channel when it has one scale per output channel.
    dq_nodes = [n for n in written.graph.node if n.op_type == "DequantizeLinear"]
    inits = {i.name: i for i in written.graph.initializer}
    per_channel = sum(1 for n in dq_nodes if n.input[0] in inits and n.input[1] in inits
                      and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1)
    if not dq_nodes:
        raise QuantizeError(f"{src.name}: the quantizer found nothing to quantize in this graph")
    return QuantizeResult(backend, fixes, tuple(float_weighted(written)), len(dq_nodes), per_channel)


def constants_as_initializers(model: Any) -> None:  # noqa: ANN401 - an onnx.ModelProto, changed in place
    """Turn ``Constant`` nodes into initializers and read initializers directly where a PyTorch
    export reaches them through ``Identity`` nodes (how it shares one weight between layers):
    NNCF finds a layer's weight only as an initializer input."""
    from onnx import numpy_helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    inits = {i.name for i in graph.initializer}
    for node in list(graph.node):
        if len(node.output) != 1 or node.output[0] in outputs:
            continue
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t),
                                                             node.output[0]))
            inits.add(node.output[0])
            graph.node.remove(node)
        elif node.op_type == "Identity" and node.input[0] in inits:
            for user in graph.node:
                for i, name in enumerate(user.input):
                    if name == node.output[0]:
                        user.input[i] = node.input[0]
            graph.node.remove(node)


def float_weighted(model: Any) -> list[str]:  # noqa: ANN401 - an onnx.ModelProto
    """Weighted nodes of a QDQ graph whose weights do not come through a DequantizeLinear: the
    layers that run in float."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    return [name for name in weighted_nodes(model)
            if len(by_name[name].input) > 1 and by_name[name].input[1] not in dequantized]


def _batches(inputs: npt.NDArray[np.float32]) -> Iterator[npt.NDArray[np.float32]]:
    for i in range(len(inputs)):
        yield inputs[i:i + 1]


def _nncf(model: Any, dst: Path, inputs: npt.NDArray[np.float32], input_name: str,  # noqa: ANN401
          keep: list[str], fixes: Fixes, target: Target | None) -> bool:
    """NNCF's quantization of ``model`` into ``dst``; whether accuracy control ran."""
    nncf = _require("nncf")
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lines list every node it skips
    advanced = nncf.AdvancedQuantizationParameters(disable_bias_correction=fixes.bias_correction == "none")
    settings: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.PERFORMANCE,  # symmetric weights and activations
        "subset_size": len(inputs), "fast_bias_correction": fixes.bias_correction != "full",
        "ignored_scope": nncf.IgnoredScope(names=keep) if keep else None}
    # NNCF draws its progress bars on stdout, which is the command's result stream: send them to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        controlled = fixes.max_float_layers > 0 and target is not None
        if controlled:
            from imgclf.quantize.accuracy import quantize_with_accuracy_control

            assert target is not None
            try:
                quantized = quantize_with_accuracy_control(
                    model, inputs, target, input_name=input_name, max_layers=fixes.max_float_layers,
                    quantize_kwargs={**settings, "advanced_quantization_parameters": advanced})
            except Exception as exc:  # noqa: BLE001 - NNCF's restorer does not take every graph
                # The int8 model without it is still a valid result, and the gate judges it.
                why = (str(exc).strip().splitlines() or [""])[0][:200]
                print(f"accuracy control failed on this graph ({type(exc).__name__}: {why}); "
                      "quantizing without it", file=sys.stderr)
                controlled = False
        if not controlled:
            dataset = nncf.Dataset(list(_batches(inputs)), lambda x: {input_name: x})
            quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **settings)
    _require("onnx").save(quantized, str(dst))
    return controlled


def _onnxruntime(src: Path, dst: Path, inputs: npt.NDArray[np.float32], input_name: str, keep: list[str]) -> None:
    _require("onnx")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(_batches(inputs))

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            x = next(self.items, None)
            return None if x is None else {input_name: x}

    with tempfile.TemporaryDirectory(prefix="imgclf-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Graph optimisation folds BatchNorm into convs, so the kept node names are those of the
        # optimised graph: the first and last weighted layer survive under their names.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep,
            # Ranges are reduced every 16 images: collecting every intermediate output of every
            # calibration image first needs tens of GB for a 224-pixel network.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "CalibMaxIntermediateOutputs": 16},
        )
