"""The model package: the contract between training and serving.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imgclf import __version__
from imgclf.cache import cache_home
from imgclf.errors import UserError
from imgclf.preprocess import PreprocessSpec

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
META_FILE = "model.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

OutputKind = Literal["logits", "probabilities"]


class PackageError(UserError, ValueError):
    """A model package is missing, incomplete or inconsistent."""


def check_name(name: str) -> str:
    """Model names become URL path segments and directory names: keep them boring."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise PackageError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


@dataclass
class PackageMeta:
    name: str
    labels: list[str]
    preprocess: PreprocessSpec
    version: str = "1"
    input_name: str = "input"
    output_name: str = "logits"
    output_kind: OutputKind = "logits"
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

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
            "provenance": self.provenance,
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
            return cls(
                name=check_name(d["name"]),
                version=str(d.get("version", "1")),
                labels=labels,
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                input_name=d["input"]["name"],
                output_name=d["output"]["name"],
                output_kind=kind,
                provenance=dict(d.get("provenance") or {}),
                format_version=version,
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
        prov = dict(meta.provenance)
        prov.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        prov.setdefault("imgclf_version", __version__)
        prov["onnx_sha256"] = sha256_file(tmp / MODEL_FILE)
        meta.provenance = prov
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


def update_provenance(path: str | os.PathLike[str], fields: dict[str, Any]) -> ModelPackage:
    """Merge ``fields`` into a written package's provenance (e.g. the metrics measured on it).

    Only ``model.json`` is rewritten, through a temporary file renamed over it: the ONNX file and
    the hash recorded for it stay as they are.
    """
    package = load_package(path)
    package.meta.provenance = {**package.meta.provenance, **fields}
    meta_path = package.path / META_FILE
    tmp = meta_path.with_name(f".{META_FILE}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_text(json.dumps(package.meta.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(meta_path)
    finally:
        tmp.unlink(missing_ok=True)
    return package


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
    expected = meta.provenance.get("onnx_sha256")
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
        provenance={"architecture": "external", "source": src.name},
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
