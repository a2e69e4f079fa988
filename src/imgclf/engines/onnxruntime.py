"""ONNX Runtime engine over a model package: what the server and ``imgclf.load(package)`` run."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from imgclf.engines.base import LogitsEngine
from imgclf.engines.outputs import Array
from imgclf.package import ModelPackage, OutputKind, PackageError
from imgclf.preprocess import PreprocessSpec

if TYPE_CHECKING:
    import onnxruntime


def default_threads() -> int:
    """Intra-op threads: IMGCLF_THREADS, else the CPUs this process may use."""
    if os.environ.get("IMGCLF_THREADS"):
        return max(1, int(os.environ["IMGCLF_THREADS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEngine(LogitsEngine):
    """ONNX Runtime session over a model package, validated against its metadata at load."""

    engine_name = "onnxruntime"

    def __init__(self, package: ModelPackage, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # imported here: ``import imgclf.engine`` stays cheap

        meta = package.meta
        self.package = package
        self.name: str = package.name
        self.version: str = meta.version
        self.precision: str = meta.precision  # an int8 package runs ONNX Runtime's int8 kernels
        self.labels: list[str] = list(package.labels)
        self.spec: PreprocessSpec = package.spec
        self.output_kind: OutputKind = meta.output_kind
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn the cores the HTTP and decode threads need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: int8 (QDQ) graphs log a warning per unused constant
        try:
            self.session: onnxruntime.InferenceSession = ort.InferenceSession(
                str(package.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PackageError(f"{package.onnx_path} cannot be loaded by ONNX Runtime: {first}") from None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if meta.input_name not in names_in:
            raise PackageError(f"model.json names input {meta.input_name!r}, but model.onnx has {names_in}")
        if meta.output_name not in names_out:
            raise PackageError(f"model.json names output {meta.output_name!r}, but model.onnx has {names_out}")
        out_shape = next(o.shape for o in self.session.get_outputs() if o.name == meta.output_name)
        if isinstance(out_shape[-1], int) and out_shape[-1] != len(self.labels):
            raise PackageError(f"model.onnx has {out_shape[-1]} outputs but model.json lists {len(self.labels)} labels")
        self.input_name, self.output_name = meta.input_name, meta.output_name

    def logits(self, batch: Array) -> Array:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        out: Array = self.session.run([self.output_name], feed)[0]
        return out

