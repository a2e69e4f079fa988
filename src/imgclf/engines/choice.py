"""Which engine and precision run a package: ``--engine`` and ``--precision``, and what ``auto`` picks.

Engines: ``onnxruntime`` (always installed) and ``openvino`` (the ``imgclf[openvino]`` extra).
Precisions: ``fp32`` (the package as exported), ``bf16`` (OpenVINO's inference-precision hint, on
CPUs with bf16 instructions), ``int8`` (the package's int8 variant written by ``imgclf quantize``,
``PACKAGE/int8``, or an int8 package given directly).

``auto`` takes the fastest candidate that this CPU and install can run and whose accuracy gate
passed. Fastest means by the speed table ``imgclf quantize`` measured for this package on a CPU
like this one (:mod:`imgclf.engines.speed`), else by :data:`RANKING` (the usual order, as measured
by ``benchmarks/engines.py``). An
int8 candidate needs a passed gate record in its package (``imgclf quantize`` measures it); a bf16
candidate without a record is measured the first time it is considered (fp32 ONNX Runtime against
bf16 on the package's test split, or the photos shipped with imgclf) and the record is written into
the fp32 package's ``model.json`` (kept in memory when the folder is read-only). An explicit precision runs even when its gate failed,
with a warning in the reason; ``auto`` never does.

ONNX Runtime has no bf16 kernels for x86 CPUs (its CPU provider computes bf16 models by casting
to fp32), so ``--engine onnxruntime --precision bf16`` is refused with a pointer to OpenVINO.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.engine import Engine
from imgclf.engines.cpu import BF16_FLAGS, INT8_FLAGS, CpuCaps, cpu_caps, cpu_signature
from imgclf.engines.openvino import INSTALL_HINT, OpenVINOMissingError, import_openvino
from imgclf.engines.speed import SpeedTable, measure
from imgclf.errors import UserError
from imgclf.package import GateRecord, ModelPackage, is_package_dir, load_package

if TYPE_CHECKING:
    from imgclf.evaluation.gate import LabelledSplit

log = logging.getLogger("imgclf.engines")

ENGINE_ARGS = ("auto", "onnxruntime", "openvino")
PRECISION_ARGS = ("auto", "fp32", "bf16", "int8")
INT8_DIR = "int8"
# Fastest first on a CPU with bf16 and VNNI (docs/benchmarks.md, "Engines and precisions"). The
# order of ONNX Runtime int8 and OpenVINO bf16 differs between models (ONNX Runtime int8 is even
# slower than fp32 on the depthwise convolutions of EfficientNet-Lite0); it matters only when
# OpenVINO int8 is out (no extra, or its gate failed).
RANKING: tuple[tuple[str, str], ...] = (
    ("openvino", "int8"), ("onnxruntime", "int8"), ("openvino", "bf16"), ("openvino", "fp32"),
    ("onnxruntime", "fp32"),
)

# (fp32 package, engine, precision) -> the gate record, measured and recorded if need be.
GateMeasure = Callable[[ModelPackage, str, str], GateRecord]


class EngineChoiceError(UserError):
    """The engine or precision asked for cannot run this package here."""


@dataclass(frozen=True)
class EngineChoice:
    """What runs a model: ``engine`` at ``precision`` over ``package`` (the int8 variant for int8),
    and why (shown in the server log, ``/v1/models/{name}`` and ``/metrics``)."""

    engine: str
    precision: str
    reason: str
    package: ModelPackage
    gate: GateRecord | None = None

    def describe(self) -> str:
        return f"{self.engine} {self.precision} ({self.reason})"


def check_args(engine: str, precision: str) -> None:
    if engine not in ENGINE_ARGS:
        raise EngineChoiceError(f"--engine must be one of {', '.join(ENGINE_ARGS)}, got {engine!r}")
    if precision not in PRECISION_ARGS:
        raise EngineChoiceError(f"--precision must be one of {', '.join(PRECISION_ARGS)}, got {precision!r}")


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def int8_package(package: ModelPackage) -> ModelPackage | None:
    """The int8 variant of ``package``: itself if it is one, else ``PACKAGE/int8`` if present."""
    if package.meta.precision == "int8":
        return package
    nested = package.path / INT8_DIR
    return load_package(nested) if is_package_dir(nested) else None


def precheck(package: ModelPackage, engine: str = "auto", precision: str = "auto", *,
             caps: CpuCaps | None = None, openvino: bool | None = None) -> None:
    """The checks of :func:`choose` that need no model run: an engine or precision asked for that
    cannot run ``package`` here is a one-line error (``imgclf serve`` calls this before listening)."""
    check_args(engine, precision)
    caps = cpu_caps() if caps is None else caps
    if engine == "openvino":
        if openvino is None:
            import_openvino()  # a missing or broken install is the one-line "pip install" error
        elif not openvino:
            raise OpenVINOMissingError(f"the OpenVINO engine needs the openvino extra: {INSTALL_HINT}")
    if package.meta.precision == "int8" and precision not in ("auto", "int8"):
        raise EngineChoiceError(f"{package.path} is an int8 package; it runs at int8 only "
                                "(pass its fp32 package for fp32 or bf16)")
    if precision == "bf16":
        if engine == "onnxruntime":
            raise EngineChoiceError("ONNX Runtime has no bf16 CPU kernels on this platform (it would compute "
                                    "in fp32 and convert): use --engine openvino --precision bf16")
        if not caps.bf16:
            raise EngineChoiceError(f"this CPU has no bf16 instructions ({' or '.join(BF16_FLAGS)}): "
                                    "use --precision fp32 or int8")
    if precision == "int8" and int8_package(package) is None:
        raise EngineChoiceError(f"{package.path} has no int8 variant ({package.path / INT8_DIR}): "
                                f"run 'imgclf quantize {package.path}' first")


def choose(package: ModelPackage, engine: str = "auto", precision: str = "auto", *,
           caps: CpuCaps | None = None, openvino: bool | None = None,
           measure: GateMeasure | None = None) -> EngineChoice:
    """Decide the engine and precision for ``package`` (see the module docstring)."""
    caps = cpu_caps() if caps is None else caps
    have_ov = openvino_installed() if openvino is None else openvino
    precheck(package, engine, precision, caps=caps, openvino=openvino)
    measure = measure_and_record if measure is None else measure
    given_int8 = package.meta.precision == "int8"
    explicit = precision != "auto" or given_int8
    candidates = [(e, p) for e, p in RANKING if engine in ("auto", e) and precision in ("auto", p)
                  and (p == "int8" or not given_int8)]
    skipped: list[str] = []
    int8 = int8_package(package)  # loaded (and its ONNX file hashed) once for every candidate
    if int8 is None:
        if any(p == "int8" for _, p in candidates):  # one note for both int8 candidates
            skipped.append(f"int8: no int8 variant (run 'imgclf quantize {package.path}')")
        candidates = [(e, p) for e, p in candidates if p != "int8"]
    table = speed_table(int8)
    if table is not None:
        candidates = table.order(candidates)
    for e, p in candidates:
        why_not, run_package, gate = _consider(package, int8, e, p, caps, have_ov, explicit, measure)
        if why_not:
            skipped.append(f"{e} {p}: {why_not}")
            continue
        assert run_package is not None
        return EngineChoice(e, p, _reason(engine, precision, gate, skipped, table), run_package, gate)
    raise EngineChoiceError(f"cannot run {package.name} with --engine {engine} --precision {precision}: "
                            + "; ".join(skipped))


def _consider(package: ModelPackage, int8: ModelPackage | None, engine: str, precision: str, caps: CpuCaps,
              have_ov: bool, explicit: bool, measure: GateMeasure) -> tuple[str, ModelPackage | None, GateRecord | None]:
    """(why ``engine``/``precision`` cannot be chosen, or ""; the package it runs; its gate record).
    ``int8`` is ``package``'s int8 variant (:func:`int8_package`)."""
    if engine == "openvino" and not have_ov:
        return "the openvino extra is not installed", None, None
    if precision == "bf16":
        if engine != "openvino":
            return "ONNX Runtime has no bf16 CPU kernels", None, None
        if not caps.bf16:
            return f"this CPU has no bf16 instructions ({' or '.join(BF16_FLAGS)})", None, None
    if precision == "int8" and not caps.int8 and not explicit:
        return f"this CPU has no int8 dot-product instructions ({' or '.join(INT8_FLAGS)})", None, None
    run = int8 if precision == "int8" else package
    assert run is not None  # choose() has dealt with a missing int8 variant
    if precision == "fp32":
        return "", run, None  # the exported model itself: nothing to gate
    gate = run.meta.gate_for(engine, precision)
    if gate is None and precision == "bf16":
        try:
            gate = measure(package, engine, precision)
        except UserError as exc:  # no photos to measure on, a package that will not compile
            if not explicit:
                return f"its accuracy gate could not be measured: {exc}", None, None
            log.warning("%s %s: accuracy gate not measured: %s", engine, precision, exc)
    if not explicit:
        if gate is None:
            return (f"no accuracy gate recorded (run 'imgclf quantize {package.path}' to measure it)",
                    None, None)
        if not gate.passed:
            return f"accuracy gate failed: {gate.reason}", None, None
    elif gate is not None and not gate.passed:
        log.warning("%s %s on %s failed its accuracy gate (%s); running it as asked", engine, precision,
                    package.name, gate.reason)
    return "", run, gate


def _reason(engine: str, precision: str, gate: GateRecord | None, skipped: list[str],
            table: SpeedTable | None = None) -> str:
    ranked = " (by the speeds measured on this CPU)" if table is not None else ""
    if engine != "auto" and precision != "auto":
        parts = ["as asked"]
    elif engine == "auto" and precision == "auto":
        parts = [f"auto: fastest{ranked} that passed its accuracy gate"]
    else:
        parts = ["auto: fastest " + (f"{engine} precision" if engine != "auto" else f"engine at {precision}") + ranked]
    if gate is not None:
        parts.append(("gate passed" if gate.passed else "gate FAILED") + f": top-1 agreement "
                     f"{gate.top1_agreement:.1f}% on {gate.images} images")
    if skipped:
        parts.append("skipped " + "; ".join(skipped))
    return ", ".join(parts)


def speed_table(int8: ModelPackage | None) -> SpeedTable | None:
    """The speed table recorded with an int8 package (a package's :func:`int8_package`), if it was
    measured on a CPU with this one's signature (speeds from another machine would mislead more
    than the fixed ranking)."""
    table = SpeedTable.from_dict(int8.meta.speed) if int8 is not None else None
    return table if table is not None and table.cpu == cpu_signature() else None


def measure_speed(package: ModelPackage, *, threads: int | None = None, min_seconds: float = 0.5) -> SpeedTable:
    """Time every engine and precision that can run ``package`` here (its int8 variant included)."""
    caps, have_ov, int8 = cpu_caps(), openvino_installed(), int8_package(package)
    fp32 = package if package.meta.precision == "fp32" else None
    builders = {}
    for e, p in RANKING:
        run = int8 if p == "int8" else fp32
        if run is None or (e == "openvino" and not have_ov) or (p == "bf16" and not caps.bf16):
            continue
        builders[(e, p)] = (lambda e=e, p=p, run=run: build(EngineChoice(e, p, "speed", run), threads=threads))
    spec = package.spec
    return measure(builders, spec.input_size, spec.channels, cpu_signature(), min_seconds=min_seconds)


def build(choice: EngineChoice, *, threads: int | None = None) -> Engine:
    """The engine of ``choice``."""
    if choice.engine == "openvino":
        from imgclf.engines.openvino import OpenVINOEngine

        return OpenVINOEngine(choice.package, precision=choice.precision, threads=threads)
    from imgclf.engines.onnxruntime import OnnxEngine

    return OnnxEngine(choice.package, threads=threads)


def open_engine(package: ModelPackage, engine: str = "auto", precision: str = "auto", *,
                threads: int | None = None) -> tuple[Engine, EngineChoice]:
    """Choose (see :func:`choose`) and build in one step: what the commands and the server call."""
    choice = choose(package, engine, precision, measure=lambda p, e, q: measure_and_record(p, e, q, threads=threads))
    return build(choice, threads=threads), choice


def gate_data(package: ModelPackage) -> tuple[LabelledSplit | None, tuple[Path, ...]]:
    """What a bf16 gate is measured on: the test (or validation) split of the data a trained package
    records, as ``imgclf quantize`` gates int8 on it; otherwise every photo shipped with imgclf
    (bf16 needs no calibration, so none has to be held out)."""
    from imgclf.quantize.photos import CALIBRATION, GATE, photos_dir
    from imgclf.quantize.sources import default_gate

    try:
        labelled = default_gate(package)[0]
    except UserError:  # an imported model that records no dataset
        labelled = None
    if labelled is not None:
        return labelled, ()
    return None, tuple(photos_dir() / name for name in (*CALIBRATION, *GATE))


def measure_and_record(package: ModelPackage, engine: str, precision: str, *,
                       threads: int | None = None) -> GateRecord:
    """Gate ``engine`` at ``precision`` against fp32 ONNX Runtime (on :func:`gate_data`), and write
    the record into ``package``'s ``model.json`` (in memory only where the folder is read-only)."""
    from imgclf.engines.onnxruntime import OnnxEngine
    from imgclf.evaluation.gate import measure_gate, record_gate

    log.info("measuring the accuracy gate of %s %s for %s (first use) ...", engine, precision, package.name)
    reference = OnnxEngine(package, threads=threads)
    candidate = build(EngineChoice(engine, precision, "gate", package), threads=threads)
    labelled, photos = gate_data(package)
    record = measure_gate(reference, candidate, labelled=labelled, photos=photos, engine=engine, precision=precision)
    gates = [g for g in package.meta.gates if (g.engine, g.precision) != (engine, precision)]
    package.meta.gates = (*gates, record)
    if os.access(package.path / "model.json", os.W_OK) and os.access(package.path, os.W_OK):
        try:
            record_gate(package.path, record)
        except UserError as exc:
            log.warning("gate of %s %s kept in memory only: %s", engine, precision, exc)
    else:
        log.warning("%s is read-only: the %s %s gate is kept in memory only", package.path, engine, precision)
    return record

