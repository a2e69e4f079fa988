"""A fine-tuned model's lineage: the version it follows and the extra data (feedback) it learned from.

``--add-data DIR`` adds class subfolders of images to the training split (never to validation or
test, so the new version is measured on the same held-out images as its parent). When ``DIR`` is an
``imgclf feedback export`` (its ``manifest.json`` says ``"kind": "imgclf-feedback-export"``), the ids
of the feedback records and the manifest's sha256 go into the package's provenance. ``--parent``
names the package (or the version store's default) the new version follows: its labels must all be
among the new ones, and its version and ONNX sha256 are recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data import RawDataset, RawSplit, scan_folder
from imgclf.errors import UserError
from imgclf.model_store import ModelStore, resolve_package
from imgclf.package import ModelPackage, PackageError, check_name, load_package

FEEDBACK_KIND = "imgclf-feedback-export"
MANIFEST = "manifest.json"


@dataclass
class ExtraData:
    """One ``--add-data`` folder: its images per class and, for a feedback export, its records."""

    path: Path
    images: int = 0
    feedback_ids: list[int | str] = field(default_factory=list)  # as the manifest has them
    manifest_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": str(self.path), "images": self.images}
        if self.manifest_sha256 is not None:
            d.update(kind=FEEDBACK_KIND, manifest_sha256=self.manifest_sha256, records=len(self.feedback_ids))
        return d


def read_manifest(folder: Path) -> tuple[list[dict[str, Any]], str] | None:
    """(records, the manifest's sha256) of a feedback export; None for a plain folder."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"--add-data {folder}: {MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != FEEDBACK_KIND:
        return None
    records = doc.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"id", "label", "file"} <= set(r)
                                                for r in records):
        raise UserError(f"--add-data {folder}: {MANIFEST} has no valid 'records' list (re-run imgclf feedback export)")
    return records, hashlib.sha256(raw).hexdigest()


def _export_files(folder: Path, records: list[dict[str, Any]], index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """The corrected images of a feedback export, by its records (a merged copy of the original
    training images in the same folder is left out: --data already holds those, some of them in
    the validation split)."""
    files, labels = [], []
    root = folder.resolve()
    for r in records:
        label, path = str(r["label"]), (folder / str(r["file"])).resolve()
        if label not in index:
            raise UserError(f"--add-data {folder}: feedback record {r['id']} is labelled {label!r}, not a class of "
                            f"--data ({', '.join(index)})")
        if root not in path.parents or not path.is_file():
            raise UserError(f"--add-data {folder}: the file of feedback record {r['id']} ({r['file']}) is missing")
        files.append(path)
        labels.append(index[label])
    return files, labels


def _folder_files(folder: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    extra = scan_folder(folder)
    unknown = [c for c in extra.classes if c not in index]
    if unknown:
        raise UserError(f"--add-data {folder}: class folder(s) {', '.join(unknown)} are not classes of --data "
                        f"({', '.join(index)})")
    files: list[Path] = []
    labels: list[int] = []
    for split in extra.splits.values():  # any split of an extra folder is training data
        files += split.files or []
        labels += [index[extra.classes[int(i)]] for i in split.labels]
    return files, labels


def add_training_data(raw: RawDataset, folders: Sequence[str | Path]) -> list[ExtraData]:
    """Append each folder's images to ``raw``'s train split (in place)."""
    extras = []
    index = {c: i for i, c in enumerate(raw.classes)}
    for f in folders:
        folder = Path(f).expanduser()
        if not folder.is_dir():
            raise UserError(f"--add-data {folder}: no such folder")
        manifest = read_manifest(folder)
        files, labels = _export_files(folder, manifest[0], index) if manifest else _folder_files(folder, index)
        train = raw.splits["train"]
        raw.splits["train"] = RawSplit(np.concatenate([train.labels, np.asarray(labels, dtype=np.int64)]),
                                       files=[*(train.files or []), *files])
        item = ExtraData(folder.resolve(), images=len(files))
        if manifest is not None:
            item.feedback_ids = [r["id"] if isinstance(r["id"], int) else str(r["id"]) for r in manifest[0]]
            item.manifest_sha256 = manifest[1]
        extras.append(item)
    return extras


def open_parent(path: str | Path) -> tuple[ModelPackage, str]:
    """The parent package and its version: a package folder, a version folder or a store (its default)."""
    p = Path(path).expanduser()
    try:
        package = load_package(resolve_package(p))
    except PackageError as exc:
        raise UserError(f"--parent {p}: {exc}") from None
    version = package.meta.version
    store = ModelStore(package.path.parent)
    if package.path.name in store.versions() and not store.is_plain():
        version = package.path.name  # a store's folder name is the version it serves under
    return package, version


def parent_settings(parent: ModelPackage) -> dict[str, Any]:
    """What a new version starts from unless told otherwise: the parent's base model and image size
    (for a parent that ``imgclf finetune`` made)."""
    prov = parent.meta.provenance
    if prov.task != "finetune" or not prov.parent:
        return {}
    return {"base": prov.parent, "image_size": parent.spec.input_size}


def publish_target(model_dir: str | Path, name: str | None, parent: str | None) -> tuple[Path, str, str | None, str]:
    """Where ``--publish-to MODEL_DIR`` writes: (the new version's folder, its version, the parent,
    the model name). The next version of ``MODEL_DIR/<name>``; its default version is the parent
    unless ``--parent`` says otherwise. A plain package there becomes version folders first, and the
    default is written down, so the new version is published without being rolled out."""
    if name is None and parent is None:
        raise UserError("--publish-to needs --name (the model's name in the model directory) or --parent")
    if name is None:
        assert parent is not None
        name = open_parent(parent)[0].name
    try:
        check_name(name)
    except PackageError as exc:
        raise UserError(str(exc)) from None
    root = Path(model_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--publish-to {root}: no such folder (the model directory a server loads from)")
    store = ModelStore(root / name)
    if store.exists():
        store.make_versioned()
        store.pin_current_default()
        parent = parent or str(store.root)
    version = str(store.next_version())
    return store.root / version, version, parent, name


def version_options(*, out: str | None, publish_to: str | None, name: str | None, parent: str | None,
                    base: str | None, image_size: int | None) -> dict[str, Any]:
    """The run's ``out``, ``name``, ``parent``, ``version``, ``base`` and ``image_size`` from
    ``--out`` or ``--publish-to`` (see :func:`publish_target`) and the parent's settings."""
    version = None
    if publish_to:
        if out:
            raise UserError("give --out or --publish-to, not both")
        target, version, parent, name = publish_target(publish_to, name, parent)
        out = str(target)
    elif not out:
        raise UserError("--out (a package folder) or --publish-to (a model directory) is required")
    if parent is not None and (base is None or image_size is None):
        inherited = parent_settings(open_parent(parent)[0])
        base = base or inherited.get("base")
        image_size = image_size or inherited.get("image_size")
    return {"out": out, "name": name, "parent": parent, "version": version, "base": base, "image_size": image_size}


def check_labels(parent: ModelPackage, labels: Sequence[str]) -> None:
    """A new version keeps every class of its parent (it may add classes)."""
    missing = [c for c in parent.labels if c not in labels]
    if missing:
        raise UserError(f"the new version would lose class(es) {', '.join(missing)} of its parent {parent.path}: "
                        f"a new version's classes must equal or extend the parent's ({', '.join(parent.labels)}); "
                        "add those class folders to --data")


def lineage_record(parent: tuple[ModelPackage, str] | None, extras: Sequence[ExtraData]) -> dict[str, Any]:
    """The provenance keys of a new version: parent version and sha256, the feedback it learned from."""
    out: dict[str, Any] = {}
    if parent is not None:
        package, version = parent
        out["parent_version"] = version
        out["parent_sha256"] = package.meta.provenance.onnx_sha256
        out["parent_path"] = str(package.path.resolve())
    ids = [i for e in extras for i in e.feedback_ids]
    if extras:
        out["added_data"] = [e.to_dict() for e in extras]
    if any(e.manifest_sha256 for e in extras):
        out["feedback"] = {"records": ids, "manifests": [e.manifest_sha256 for e in extras if e.manifest_sha256]}
    return out
