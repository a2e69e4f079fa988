"""What a bulk job reads: SOURCE arguments -> one list of image locations, each once.

A source is a folder (every image under it, at any depth), a glob (``photos/**/*.jpg``), a manifest
(a ``.txt`` with one path per line, or a ``.csv``/``.parquet`` with a ``path`` column), a single
file, or a URI that pyarrow's filesystems open (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``,
``file://``): a URI naming a folder is listed recursively. Local paths become absolute, so workers
on other nodes and a re-run from another directory name the same file the same way. Relative
paths inside a manifest are relative to the manifest's folder, so a manifest travels with its data.

A path that does not exist stays in the list: the job reports it as a row with an error, the
way ``imgclf predict`` does.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from imgclf.errors import UserError
from imgclf.images import image_files, is_image_path

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")


class SourceError(UserError):
    """A SOURCE argument that names nothing readable (an empty glob, a manifest without paths)."""


def is_uri(location: str) -> bool:
    return bool(_URI.match(location))


def list_sources(sources: Sequence[str]) -> list[str]:
    """Every image location the sources name, in order, duplicates dropped (the first one kept)."""
    seen: dict[str, None] = {}
    for source in sources:
        for location in _expand(source):
            seen.setdefault(location, None)
    if not seen:
        raise SourceError("no image files found in " + ", ".join(sources))
    return list(seen)


def _expand(source: str) -> Iterable[str]:
    if is_uri(source):
        return _expand_uri(source)
    path = Path(source)
    if path.is_dir():
        return [os.path.abspath(p) for p in image_files(path)]
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        if not path.is_file():
            raise SourceError(f"manifest {source} not found")
        return read_manifest(path)
    if not path.exists() and _GLOB_CHARS.search(source):
        matches = sorted(p for p in glob.glob(source, recursive=True) if is_image_path(Path(p)) and Path(p).is_file())
        if not matches:
            raise SourceError(f"the pattern {source!r} matches no image files")
        return [os.path.abspath(p) for p in matches]
    return [os.path.abspath(path)]


def read_manifest(path: Path) -> list[str]:
    """A manifest's locations: ``.txt`` one per line (blank lines and ``#`` comments skipped),
    ``.csv``/``.parquet`` the ``path`` column."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            raw = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise SourceError(f"manifest {path} has no 'path' column (columns: {reader.fieldnames})")
                raw = [row["path"].strip() for row in reader if (row["path"] or "").strip()]
        else:
            raw = _parquet_paths(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read manifest {path}: {exc}") from None
    if not raw:
        raise SourceError(f"manifest {path} lists no files")
    base = path.parent
    return [p if is_uri(p) else os.path.abspath(base / p) for p in raw]


def _parquet_paths(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if "path" not in schema.names:
            raise SourceError(f"manifest {path} has no 'path' column (columns: {schema.names})")
        column = pq.read_table(path, columns=["path"]).column("path")
    except pa.ArrowException as exc:
        raise SourceError(f"cannot read manifest {path}: {exc}") from None
    return [str(p).strip() for p in column.to_pylist() if p is not None and str(p).strip()]


def _expand_uri(uri: str) -> list[str]:
    """A URI naming a folder -> the image files under it (as URIs); any other URI as given."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if _GLOB_CHARS.search(uri.split("://", 1)[1]):
        raise SourceError(f"{uri}: patterns are for local paths; name a folder or list the files in a manifest")
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(base)
        if info.type != pafs.FileType.Directory:
            return [uri]
        listed = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"cannot list {uri}: {str(exc).splitlines()[0]}") from None
    prefix, root = uri.rstrip("/"), base.rstrip("/")
    return sorted(prefix + f.path[len(root):] for f in listed
                  if f.type == pafs.FileType.File and is_image_path(Path(f.path)))
