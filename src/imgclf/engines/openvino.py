"""OpenVINO engine over a model package's ``model.onnx`` (the optional ``imgclf[openvino]`` extra).

OpenVINO reads the package's ONNX file as it is (no conversion step, no second file format): an
fp32 package runs at fp32 or, on a CPU with bf16 instructions, at bf16 through OpenVINO's
inference-precision hint; an int8 (QDQ) package runs its int8 kernels. The engine compiles once
for a dynamic batch and runs one request at a time: the server's micro-batcher and ``predict``
hand it whole batches in turn, so the LATENCY hint (one stream using every thread it is given)
is the fitting mode.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.engines.base import LogitsEngine
from imgclf.engines.onnxruntime import default_threads
from imgclf.engines.outputs import Array
from imgclf.engines.signal_stack import kept_signal_stack
from imgclf.errors import UserError
from imgclf.package import ModelPackage, OutputKind, PackageError
from imgclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import openvino

# Our precision names -> OpenVINO's inference-precision hint. An int8 package keeps f32 for the
# layers that are not quantized (the gate measured exactly that).
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
INSTALL_HINT = "pip install 'imgclf[openvino]'"


class OpenVINOMissingError(UserError):
    """The OpenVINO engine was asked for, but the ``openvino`` package is not installed."""


def import_openvino() -> Any:  # noqa: ANN401 - the module itself
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise OpenVINOMissingError(f"the OpenVINO engine needs the openvino extra: {INSTALL_HINT}") from None
    return openvino


def compile_config(precision: str, threads: int) -> dict[str, Any]:
    """The CPU plugin settings for ``precision`` on ``threads`` threads (what :class:`OpenVINOEngine`
    passes to ``compile_model``; a test checks they were applied)."""
    if precision not in _HINTS:
        raise UserError(f"precision must be one of {', '.join(_HINTS)}, got {precision!r}")
    return {
        "INFERENCE_PRECISION_HINT": _HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        # Pinning threads to cores fights the decode threads and other processes on a small machine.
        "ENABLE_CPU_PINNING": False,
    }


class OpenVINOEngine(LogitsEngine):
    """A package's ONNX model compiled by OpenVINO for the CPU at a given precision."""

    engine_name = "openvino"

    def __init__(self, package: ModelPackage, *, precision: str | None = None, threads: int | None = None) -> None:
        ov = import_openvino()
        meta = package.meta
        precision = precision or meta.precision  # default: what the package holds (fp32 or int8)
        if precision == "int8" and meta.precision != "int8":
            raise UserError(f"{package.path} holds an {meta.precision} model; int8 runs an int8 package "
                            "(imgclf quantize)")
        if precision != "int8" and meta.precision == "int8":
            raise UserError(f"{package.path} is an int8 package; it runs at int8 only")
        self.package = package
        self.precision: str = precision
        self.name: str = package.name
        self.version: str = meta.version
        self.labels: list[str] = list(package.labels)
        self.spec: PreprocessSpec = package.spec
        self.output_kind: OutputKind = meta.output_kind
        self.threads = threads or default_threads()
        self.config = compile_config(precision, self.threads)
        # OpenVINO leaves its own alternate signal stack on this thread: see engines/signal_stack.
        with kept_signal_stack():
            core = ov.Core()
            try:
                model = core.read_model(str(package.onnx_path))
                names_in = [n for p in model.inputs for n in p.get_names()]
                names_out = [n for p in model.outputs for n in p.get_names()]
                if meta.input_name not in names_in:
                    raise PackageError(f"model.json names input {meta.input_name!r}, but model.onnx has {names_in}")
                if meta.output_name not in names_out:
                    raise PackageError(f"model.json names output {meta.output_name!r}, but model.onnx has {names_out}")
                shape = model.input(meta.input_name).get_partial_shape()
                if shape.rank.is_static and shape.rank.get_length() == 4:
                    dims = list(shape)
                    dims[0] = ov.Dimension()  # any batch size, compiled once
                    model.reshape({meta.input_name: ov.PartialShape(dims)})
                self.compiled: openvino.CompiledModel = core.compile_model(model, "CPU", self.config)
            except PackageError:
                raise
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with long texts
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise PackageError(f"{package.path} cannot be compiled by OpenVINO: {first}") from None
            self.input_name, self.output_name = meta.input_name, meta.output_name
            self._output = self.compiled.output(meta.output_name)
            self._request = self.compiled.create_infer_request()
            del core
        self._lock = threading.Lock()  # one request, one batch at a time

    def __del__(self) -> None:
        # Released inside the guard too: OpenVINO puts back, on this thread, the stack it found at build.
        with kept_signal_stack():
            for attr in ("_request", "_output", "compiled"):
                self.__dict__.pop(attr, None)

    def applied(self, key: str) -> Any:  # noqa: ANN401 - OpenVINO property values vary in type
        """The compiled model's value of an OpenVINO property (what OpenVINO really uses)."""
        return self.compiled.get_property(key)

    def logits(self, batch: Array) -> Array:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            self._request.infer({self.input_name: x})
            # The output tensor is the request's own buffer, reused by the next call: copy it out.
            out: Array = np.array(self._request.get_tensor(self._output).data, dtype=np.float32, copy=True)
        return out

