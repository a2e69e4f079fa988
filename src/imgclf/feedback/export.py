"""Accepted corrections -> an image folder ``<label>/<sha256>.jpg`` plus ``manifest.json``.

The folder is what ``imgclf train`` and ``imgclf finetune`` read; optionally the original training
folder is merged in (its files copied beside the corrections). ``manifest.json`` says exactly what
went in::

    {"kind": "imgclf-feedback-export", "format": 1, "created_at": "...Z",
     "merged_with": "/abs/train/folder" | null, "merged_files": 1234,
     "records": [{"id", "sha256", "label", "model", "version", "file"}, ...]}

``file`` is relative to the export folder. JPEG originals are copied byte for byte; other formats
are decoded (EXIF orientation applied) and written as JPEG.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgclf.atomic import atomic_write
from imgclf.feedback.errors import FeedbackError
from imgclf.feedback.store import FeedbackStore, Record
from imgclf.images import decode, image_files

MANIFEST = "manifest.json"
KIND = "imgclf-feedback-export"
FORMAT = 1
JPEG_QUALITY = 95


@dataclass(frozen=True)
class ExportResult:
    out: Path
    records: int
    files: int
    merged_files: int


MAX_DIR_BYTES = 255  # the longest file name ext4, XFS, Btrfs and NTFS take


def label_dir(label: str) -> str:
    """A label as a folder name: never a path (no separators, no '.' or '..', no NUL)."""
    name = label.replace("/", "_").replace("\\", "_").replace("\x00", "")
    if name.strip(".") == "" or name != name.strip():
        name = "_" + name.strip() + "_"
    if len(name.encode()) > MAX_DIR_BYTES:  # file systems refuse longer names: cut, and keep labels apart
        digest = hashlib.sha256(label.encode()).hexdigest()[:12]
        name = name.encode()[:MAX_DIR_BYTES - 13].decode("utf-8", "ignore") + "-" + digest
    return name


def _jpeg(data: bytes) -> bytes:
    if data[:3] == b"\xff\xd8\xff":
        return data
    buf = io.BytesIO()
    Image.fromarray(decode(data)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _merge(train: Path, out: Path) -> int:
    """Link (or copy) the training images of ``train`` (``<class>/...`` or ``train/<class>/...``;
    its test and val splits stay out) into ``out/<class>/``; returns how many."""
    if not train.is_dir():
        raise FeedbackError(f"--merge-with {train}: not a folder")
    root = train / "train" if (train / "train").is_dir() else train
    n = 0
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in image_files(cls):
            target = out / cls.name / f.relative_to(cls)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)  # no copy where the file system allows
            except OSError:
                shutil.copy2(f, target)
            n += 1
    if n == 0:
        raise FeedbackError(f"--merge-with {train}: no images in class folders (<class>/<image>)")
    return n


def export(store: FeedbackStore, out: Path, *, model: str | None = None, version: str | None = None,
           merge_with: Path | None = None) -> ExportResult:
    """Write the accepted records (of ``model``/``version``) into the new or empty folder ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FeedbackError(f"{out} exists and is not an empty folder; export into a new folder")
    records: list[Record] = list(store.iter_records(status="accepted", model=model, version=version))
    if not records:
        which = " of " + model + (f" version {version}" if version else "") if model else ""
        raise FeedbackError(f"no accepted feedback{which} to export; accept some with imgclf feedback accept")
    out.mkdir(parents=True, exist_ok=True)
    merged = _merge(Path(merge_with), out) if merge_with is not None else 0
    entries: list[dict[str, Any]] = []
    written: set[str] = set()
    for r in records:
        rel = f"{label_dir(r.label)}/{r.sha256}.jpg"
        if rel not in written:
            if (out / rel).exists():
                raise FeedbackError(f"{rel} is both in {merge_with} and among the corrections")
            (out / label_dir(r.label)).mkdir(exist_ok=True)
            try:
                data = store.blobs.read(r.sha256)
            except FileNotFoundError:
                raise FeedbackError(f"record {r.id}: its image {r.sha256} is missing from "
                                    f"{store.blobs.root}") from None
            atomic_write(out / rel, _jpeg(data))
            written.add(rel)
        entries.append({"id": r.id, "sha256": r.sha256, "label": r.label, "model": r.model,
                        "version": r.version, "file": rel})
    manifest = {
        "kind": KIND, "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "merged_with": str(Path(merge_with).resolve()) if merge_with is not None else None,
        "merged_files": merged,
        "records": entries,
    }
    atomic_write(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return ExportResult(out=out, records=len(entries), files=len(written), merged_files=merged)


def read_manifest(folder: Path) -> dict[str, Any]:
    """An export's manifest, checked to be one (for readers such as fine-tuning)."""
    path = Path(folder) / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FeedbackError(f"{path}: not a readable feedback export manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("records"), list):
        raise FeedbackError(f"{path}: not a feedback export manifest (kind {KIND!r})")
    return doc
