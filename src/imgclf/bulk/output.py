"""Where a bulk job's answers go: one row per file, in part files while it runs, one file at the end.

A row is ``path``, ``predictions`` (top-k ``index``/``label``/``score``, best first; null for a
file that failed), ``error`` (null for a file that worked), ``model`` and ``model_version``.
``--out`` picks the format by its suffix: ``.parquet`` (pyarrow) or ``.jsonl`` (one JSON object
per line, the shape of ``imgclf predict --json`` with ``path`` for ``file``).

While the job runs, finished rows are written to ``OUT.parts/part-NNNNNN.EXT``, each part written
to a temporary name and renamed, so a part on disk is always whole. An interrupted job keeps its
parts; the next run with the same ``--out`` reads the paths already answered (in ``OUT`` and in the
parts) and skips them. At the end the old output and the parts are streamed into a new ``OUT``
(again written aside and renamed) and the parts folder is removed. A lock file keeps two jobs from
writing the same output at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imgclf.errors import UserError

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}

Row = dict[str, Any]


class OutputError(UserError):
    """An output path that cannot be used: a wrong suffix, another model's answers, a busy lock."""


def output_format(out: Path) -> str:
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise OutputError(f"--out {out}: the name must end in .parquet or .jsonl (the suffix picks the format)")
    return fmt


def arrow_schema() -> Any:  # noqa: ANN401 - a pyarrow.Schema (pyarrow is imported lazily)
    import pyarrow as pa

    prediction = pa.struct([("index", pa.int64()), ("label", pa.string()), ("score", pa.float64())])
    return pa.schema([("path", pa.string()), ("predictions", pa.list_(prediction)), ("error", pa.string()),
                      ("model", pa.string()), ("model_version", pa.string())])


class ResultStore:
    """The output of one job: the final file, its part files, what is already answered."""

    def __init__(self, out: str | os.PathLike[str], model: str, version: str) -> None:
        self.out = Path(out)
        self.format = output_format(self.out)
        self.suffix = self.out.suffix.lower()
        self.parts_dir = self.out.with_name(self.out.name + ".parts")
        self.model, self.version = model, version

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output's lock for the whole job (another job on the same ``--out`` is refused)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(exist_ok=True)
        with open(self.parts_dir / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(f"another job is writing {self.out}") from None
            for stale in self.parts_dir.glob(".*.tmp"):  # left by a job killed while writing a part
                stale.unlink()
            yield

    def parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob(f"part-*{self.suffix}")) if self.parts_dir.is_dir() else []

    def sources(self) -> list[Path]:
        """Files holding rows: the previous output, then the parts in order."""
        return ([self.out] if self.out.is_file() else []) + self.parts()

    def done(self) -> set[str]:
        """Paths already answered. Rows of another model or version are refused: one output, one model."""
        done: set[str] = set()
        for f in self.sources():
            for path, model, version in self._keys(f):
                if (model, version) != (self.model, self.version):
                    raise OutputError(f"{self.out} holds answers of {model} {version}, not of {self.model} "
                                      f"{self.version}; choose another --out")
                done.add(path)
        return done

    def _keys(self, f: Path) -> Iterator[tuple[str, str, str]]:
        try:
            if self.format == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                try:
                    for batch in pq.ParquetFile(f).iter_batches(columns=["path", "model", "model_version"]):
                        yield from zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True)
                except (pa.ArrowException, KeyError) as exc:
                    raise OutputError(f"{f} is not a result file of imgclf: {exc}") from None
            else:
                with f.open(encoding="utf-8") as lines:
                    for n, line in enumerate(lines, 1):
                        try:
                            row = json.loads(line)
                            yield row["path"], row["model"], row["model_version"]
                        except (ValueError, KeyError, TypeError):
                            raise OutputError(f"{f}:{n} is not a row of imgclf's results") from None
        except OSError as exc:
            raise OutputError(f"cannot read {f}: {exc}") from None

    def write_part(self, rows: Sequence[Row]) -> Path:
        """Write ``rows`` as the next part file, whole or not at all."""
        numbers = [int(p.name.split("-")[1].split(".")[0]) for p in self.parts()]
        final = self.parts_dir / f"part-{max(numbers, default=-1) + 1:06d}{self.suffix}"
        tmp = self.parts_dir / f".{final.name}.tmp"
        self._write(tmp, rows)
        os.replace(tmp, final)
        return final

    def _write(self, path: Path, rows: Sequence[Row]) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(list(rows), schema=arrow_schema()), path)
        else:
            with path.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
                f.flush()
                os.fsync(f.fileno())

    def _count(self, f: Path) -> int:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            rows: int = pq.ParquetFile(f).metadata.num_rows
            return rows
        with f.open("rb") as lines:
            return sum(1 for _ in lines)

    def finish(self) -> int:
        """Stream the previous output and every part into a new ``out``; returns its row count."""
        sources = self.sources()
        if sources == [self.out]:  # nothing new: the output stays as it is
            shutil.rmtree(self.parts_dir)
            return self._count(self.out)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        rows = 0
        if self.format == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, arrow_schema()) as writer:
                for f in sources:
                    for batch in pq.ParquetFile(f).iter_batches():
                        writer.write_batch(batch)
                        rows += batch.num_rows
        else:
            with tmp.open("wb") as dst:
                for f in sources:
                    rows += self._count(f)
                    with f.open("rb") as src:
                        shutil.copyfileobj(src, dst)
        os.replace(tmp, self.out)
        shutil.rmtree(self.parts_dir)
        return rows
