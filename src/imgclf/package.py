"""The model package: the contract between training and serving (one file, about 400 lines, on
purpose: its typed metadata and provenance, reading, validation and writing change together).

A package is a directory holding ``model.onnx`` and ``model.json``. ``model.json`` carries the
format version, name, version, labels, preprocessing spec, input and output names and provenance
(architecture, weights, dataset, metrics, creation time). Everything the server needs, nothing
more. This module never imports torch; exporting from torch lives in :mod:`imgclf.export`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from imgclf import __version__
from imgclf.atomic import atomic_write
from imgclf.cache import cache_home
from imgclf.errors import UserError
from imgclf.preprocess import PreprocessSpec

# Still 1: ``precision`` and ``gates`` (int8 packages, accuracy gates) are optional keys whose
# absence means what every earlier package was (fp32, nothing measured), so every package written
# before loads unchanged, and an older imgclf reading an int8 package runs it as the valid ONNX
# model it is (it only cannot see the gate records).
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "model.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

OutputKind = Literal["logits", "probabilities"]
PRECISIONS = ("fp32", "bf16", "int8")


class PackageError(UserError, ValueError):
    """A model package is missing, incomplete or inconsistent."""


def _object(value: Any, what: str) -> Mapping[str, Any]:  # noqa: ANN401 - any JSON value
    if not isinstance(value, Mapping):
        raise PackageError(f"model.json: {what!r} must be an object")
    return value


NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def package_name(raw: str, default: str = "model") -> str:
    """A valid model name (see :func:`check_name`) from free text such as a folder or dataset
    name: runs of other characters become '-', '..' becomes '.', at most 64 characters."""
    name = re.sub(r"\.{2,}", ".", NAME_CHARS.sub("-", raw)).lstrip("-._")[:64].rstrip("-.")
    return name or default


def check_name(name: str) -> str:
    """Model names become URL path segments and directory names: keep them boring."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise PackageError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


Metrics = Mapping[str, "float | int | None"]
# Keys of the three provenance shapes written before the record was typed (train, finetune, zoo export).
_TRAINING_KEYS = ("arch_options", "recipe", "recipe_settings", "epochs", "steps", "seed", "stopped",
                  "training_seconds", "precision", "channels_last", "threads", "test_time_augmentation")


@dataclass(frozen=True)
class DatasetRecord:
    """What a model was trained or evaluated on."""

    name: str
    path: str | None = None
    format: str | None = None
    classes: tuple[str, ...] = ()
    splits: Mapping[str, int] = field(default_factory=dict)  # images per split: train, val, test
    val_from: str | None = None  # how the validation split was made
    skipped_files: int = 0  # unreadable files left out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "format": self.format, "classes": list(self.classes),
                "splits": dict(self.splits), "val_from": self.val_from, "skipped_files": self.skipped_files}

    @classmethod
    def from_json(cls, d: Any) -> DatasetRecord:  # noqa: ANN401 - any JSON value
        """The record from its ``to_dict`` form, or from what older packages wrote: a bare name
        (zoo exports), a training run's summary or a fine-tuning run's."""
        if isinstance(d, str):
            return cls(name=d)
        if not isinstance(d, dict):
            raise PackageError(f"provenance 'dataset' must be a name or an object, got {d!r}")
        path = d.get("path")
        splits = d.get("splits")
        if splits is None:  # older shapes: counts at the top (train) or per class (finetune)
            counts = d.get("counts")
            if isinstance(counts, dict):
                splits = {k: int(sum(v)) for k, v in counts.items()}
            else:
                splits = {k: int(d[k]) for k in ("train", "val", "test") if isinstance(d.get(k), int)}
        name = d.get("name") or (Path(str(path)).name if path else "unknown")
        return cls(name=str(name), path=None if path is None else str(path), format=d.get("format"),
                   classes=tuple(str(c) for c in d.get("classes") or ()), splits=dict(splits),
                   val_from=d.get("val_from"), skipped_files=int(d.get("skipped_files") or 0))


@dataclass(frozen=True)
class Provenance:
    """Where a packaged model comes from: one record for trained, fine-tuned, exported and imported models.

    ``task`` says which (``train``, ``finetune``, ``export``, ``import``); ``parent`` names the model
    it started from (a fine-tuned model's base); ``training`` holds the task's settings and run facts
    (recipe, epochs, seed, ...); ``extra`` keeps keys this version does not know, so rewriting a
    newer package loses nothing.
    """

    architecture: str = "unknown"
    task: str | None = None
    family: str | None = None
    num_params: int | None = None
    weights: str | None = None
    weights_source: str | None = None
    weights_url: str | None = None
    weights_license: str | None = None
    parent: str | None = None
    dataset: DatasetRecord | None = None
    metrics: Metrics = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    export_check: Mapping[str, Any] = field(default_factory=dict)  # ONNX Runtime vs torch at export
    source: str | None = None  # the file an imported model came from
    created: str | None = None
    imgclf_version: str | None = None
    onnx_sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None or (isinstance(value, Mapping) and not value):
                continue
            d[f.name] = value.to_dict() if isinstance(value, DatasetRecord) else (
                dict(value) if isinstance(value, Mapping) else value)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        """Read ``model.json``'s provenance, in this version's shape or any earlier one."""
        rest = dict(d)
        known = {f.name for f in fields(cls)} - {"extra", "dataset", "training", "metrics", "export_check"}
        values: dict[str, Any] = {k: rest.pop(k) for k in list(rest) if k in known}
        training = dict(rest.pop("training", None) or {})
        if "finetune" in rest:  # fine-tuning runs before the typed record
            training = {**dict(rest.pop("finetune") or {}), **training}
            values.setdefault("task", "finetune")
        if "base_model" in rest:
            values.setdefault("parent", rest.pop("base_model"))
        moved = {k: rest.pop(k) for k in _TRAINING_KEYS if k in rest}
        if moved and "recipe" in moved:
            values.setdefault("task", "train")
        training = {**moved, **training}
        dataset = rest.pop("dataset", None)
        if isinstance(dataset, dict) and dataset.get("eval_split") is not None:
            training.setdefault("eval_split", dataset["eval_split"])
        for key in ("num_params",):
            if values.get(key) is not None:
                values[key] = int(values[key])
        return cls(**values, dataset=None if dataset is None else DatasetRecord.from_json(dataset),
                   metrics=dict(rest.pop("metrics", None) or {}), training=training,
                   export_check=dict(rest.pop("export_check", None) or {}), extra=rest)


@dataclass(frozen=True)
class GateRecord:
    """One accuracy-gate measurement: a candidate (an engine at a precision) against the fp32 model.

    ``top1_reference``/``top1`` are accuracies in percent on a labelled set (``None`` when the set
    was unlabelled); ``top1_agreement`` and ``top5_overlap`` are percentages on every image
    measured. ``passed`` is False with ``reason`` saying which threshold was missed.
    """

    engine: str
    precision: str
    passed: bool
    images: int
    labelled: bool
    top1_reference: float | None
    top1: float | None
    top1_agreement: float
    top5_overlap: float
    data: str
    reason: str = ""
    measured_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any) -> GateRecord:  # noqa: ANN401 - any JSON value
        if not isinstance(d, Mapping):
            raise PackageError(f"model.json: each of 'gates' must be an object, got {d!r}")
        try:
            def opt(key: str) -> float | None:
                return None if d.get(key) is None else float(d[key])

            precision = str(d["precision"])
            if precision not in PRECISIONS:
                raise PackageError(f"model.json: gate precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
            return cls(engine=str(d["engine"]), precision=precision, passed=bool(d["passed"]),
                       images=int(d["images"]), labelled=bool(d.get("labelled", False)),
                       top1_reference=opt("top1_reference"), top1=opt("top1"),
                       top1_agreement=float(d["top1_agreement"]), top5_overlap=float(d["top5_overlap"]),
                       data=str(d.get("data", "")), reason=str(d.get("reason", "")),
                       measured_at=str(d.get("measured_at", "")))
        except KeyError as exc:
            raise PackageError(f"model.json: a gate record has no {exc.args[0]!r}") from None


@dataclass
class PackageMeta:
    name: str
    labels: list[str]
    preprocess: PreprocessSpec
    version: str = "1"
    input_name: str = "input"
    output_name: str = "logits"
    output_kind: OutputKind = "logits"
    provenance: Provenance = field(default_factory=Provenance)
    format_version: int = FORMAT_VERSION
    precision: str = "fp32"  # of the weights and activations in model.onnx: fp32 or int8
    gates: tuple[GateRecord, ...] = ()
    # Measured speed of each engine and precision on one CPU (imgclf.engines.speed reads it).
    speed: dict[str, Any] | None = None

    def gate_for(self, engine: str, precision: str) -> GateRecord | None:
        """The accuracy-gate record of ``engine`` running this model at ``precision``, if measured."""
        return next((g for g in self.gates if g.engine == engine and g.precision == precision), None)

    def to_dict(self) -> dict[str, Any]:
        size = self.preprocess.input_size
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "task": "image-classification",
            "labels": list(self.labels),
            "preprocess": self.preprocess.to_dict(),
            "input": {
                "name": self.input_name,
                "shape": [None, self.preprocess.channels, size, size],
                "dtype": "float32",
            },
            "output": {"name": self.output_name, "kind": self.output_kind, "shape": [None, len(self.labels)]},
            "provenance": self.provenance.to_dict(),
            # Written only when they say something: an fp32 package without gates stays byte-for-byte
            # what earlier versions wrote.
            **({"precision": self.precision} if self.precision != "fp32" else {}),
            **({"gates": [g.to_dict() for g in self.gates]} if self.gates else {}),
            **({"speed": self.speed} if self.speed else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackageMeta:
        try:
            version = int(d["format_version"])
            if version > FORMAT_VERSION:
                raise PackageError(
                    f"package format {version} is newer than this imgclf understands ({FORMAT_VERSION}); upgrade imgclf"
                )
            labels = d["labels"]
            if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
                raise PackageError("'labels' must be a non-empty list of strings")
            kind = d["output"].get("kind", "logits")
            if kind not in ("logits", "probabilities"):
                raise PackageError(f"output kind must be 'logits' or 'probabilities', got {kind!r}")
            precision = str(d.get("precision") or "fp32")
            if precision not in ("fp32", "int8"):
                raise PackageError(f"'precision' must be 'fp32' or 'int8', got {precision!r}")
            gates = d.get("gates", [])
            if not isinstance(gates, list):
                raise PackageError("'gates' must be a list of gate records")
            return cls(
                name=check_name(d["name"]),
                version=str(d.get("version", "1")),
                labels=labels,
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                input_name=d["input"]["name"],
                output_name=d["output"]["name"],
                output_kind=kind,
                provenance=Provenance.from_dict(_object(d.get("provenance") or {}, "provenance")),
                format_version=version,
                precision=precision,
                gates=tuple(GateRecord.from_dict(g) for g in gates),
                speed=dict(_object(d["speed"], "speed")) if d.get("speed") is not None else None,
            )
        except PackageError:
            raise
        except (KeyError, TypeError, AttributeError) as exc:
            raise PackageError(f"model.json is missing or has a malformed field: {exc}") from None
        except ValueError as exc:
            raise PackageError(f"model.json has an invalid value: {exc}") from None


@dataclass
class ModelPackage:
    path: Path
    meta: PackageMeta

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def labels(self) -> list[str]:
        return self.meta.labels

    @property
    def spec(self) -> PreprocessSpec:
        return self.meta.preprocess


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def update_meta(package_dir: str | os.PathLike[str], key: str, value: Any) -> None:  # noqa: ANN401 - JSON
    """Set one top-level key of a package's ``model.json``, every other key left as it was (keys
    this version does not know included). The file is replaced whole (:func:`imgclf.atomic.atomic_write`),
    keeping its permissions."""
    path = Path(package_dir) / META_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw[key] = value
        atomic_write(path, json.dumps(raw, indent=2) + "\n", mode=path.stat().st_mode & 0o777)
    except OSError as exc:
        raise PackageError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_package(out_dir: str | os.PathLike[str], onnx_file: str | os.PathLike[str], meta: PackageMeta) -> ModelPackage:
    """Write ``onnx_file`` and ``meta`` as a package at ``out_dir``.

    The package is assembled in a temporary sibling directory and renamed into place, so an
    interrupted export never leaves a half-written package and an existing one is replaced whole.
    """
    out = Path(out_dir)
    check_name(meta.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its 0700 folder would make the package unreadable to a server running as
    # another user. mkdir gives the usual umask-governed mode; the name is still unique.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        shutil.copyfile(onnx_file, tmp / MODEL_FILE)
        prov = meta.provenance
        meta.provenance = replace(
            prov, created=prov.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            imgclf_version=prov.imgclf_version or __version__, onnx_sha256=sha256_file(tmp / MODEL_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ModelPackage(out, meta)


def is_package_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file()


def load_package(path: str | os.PathLike[str], *, verify_hash: bool = True) -> ModelPackage:
    """Read and validate a package directory; raise :class:`PackageError` with a clear message."""
    p = Path(path)
    if not p.is_dir():
        raise PackageError(f"{p} is not a directory (a model package is a folder with model.onnx and model.json)")
    meta_path, onnx_path = p / META_FILE, p / MODEL_FILE
    if not meta_path.is_file():
        raise PackageError(f"{p} has no {META_FILE}; not a model package")
    if not onnx_path.is_file():
        raise PackageError(f"{p} has no {MODEL_FILE}; the package is incomplete")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PackageError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise PackageError(f"{meta_path} must hold a JSON object")
    meta = PackageMeta.from_dict(raw)
    expected = meta.provenance.onnx_sha256
    if verify_hash and expected and sha256_file(onnx_path) != expected:
        raise PackageError(
            f"{onnx_path} does not match the sha256 recorded in {META_FILE}; the files come from different exports"
        )
    return ModelPackage(p, meta)


def import_onnx(
    onnx_file: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    labels: list[str],
    spec: PreprocessSpec,
    name: str | None = None,
    version: str = "1",
    output_kind: OutputKind | None = None,
) -> ModelPackage:
    """Wrap an external ONNX classifier (for example one converted from Keras) into a package.

    The graph is checked with ONNX Runtime: one image input, one output with ``len(labels)``
    classes. Channels-last (NHWC) inputs are refused with a message saying to transpose.
    """
    import numpy as np
    import onnxruntime as ort

    src = Path(onnx_file)
    if not src.is_file():
        raise PackageError(f"ONNX file not found: {src}")
    try:
        sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise PackageError(f"{src} is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1:
        raise PackageError(f"{src.name} has {len(inputs)} inputs; an image classifier has exactly one")
    shape = inputs[0].shape
    if len(shape) != 4:
        raise PackageError(f"{src.name} input has shape {shape}; expected (batch, channels, height, width)")
    if shape[1] != spec.channels and shape[3] == spec.channels:
        raise PackageError(
            f"{src.name} takes channels-last input {shape}; imgclf packages are NCHW (re-export with a transpose)"
        )
    probe = np.zeros((1, spec.channels, spec.input_size, spec.input_size), np.float32)
    try:
        out = sess.run([outputs[0].name], {inputs[0].name: probe})[0]
    except Exception as exc:  # noqa: BLE001
        raise PackageError(
            f"{src.name} does not run on a {probe.shape} input (check --size): {str(exc).splitlines()[0]}"
        ) from None
    if out.ndim != 2 or out.shape[1] != len(labels):
        raise PackageError(f"{src.name} outputs shape {list(out.shape)}, but {len(labels)} labels were given")
    if output_kind is None:
        # A softmax output sums to one; logits practically never do.
        output_kind = "probabilities" if abs(float(out.sum()) - 1.0) < 1e-3 and (out >= 0).all() else "logits"
    meta = PackageMeta(
        name=check_name(name or src.stem),
        version=version,
        labels=list(labels),
        preprocess=spec,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        output_kind=output_kind,
        provenance=Provenance(architecture="external", task="import", source=src.name),
    )
    return write_package(out_dir, src, meta)


def read_labels_file(path: str | os.PathLike[str]) -> list[str]:
    """One label per line (blank lines ignored), or a JSON list."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageError(f"cannot read labels file {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PackageError(f"labels file {p} is not UTF-8 text (one label per line, or a JSON list)") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PackageError(f"labels file {p} starts like a JSON list but is not valid JSON: {exc}") from None
        if not isinstance(labels, list):
            raise PackageError(f"labels file {p} must hold a JSON list of labels")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise PackageError(f"labels file {p} is empty")
    return [str(s) for s in labels]


def cache_dir() -> Path:
    """Where zoo models exported on demand are kept (``IMGCLF_HOME`` overrides)."""
    return cache_home("packages")
