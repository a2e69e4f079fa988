"""The feedback store's service API: record, list, review, delete, usage, and the prediction log.

A correction is acknowledged only once its database transaction has committed and its image file
is on disk under its hash (written before the commit), so whatever was acknowledged survives a
crash. Database failures become :class:`StoreUnavailableError` and a full disk
:class:`StorageFullError`: the caller answers 503 and nothing stored before is touched.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, delete, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from imgclf.feedback import migrate
from imgclf.feedback.blobs import BlobStore, check_sha256, sha256_hex
from imgclf.feedback.engine import is_sqlite, make_engine, redact
from imgclf.feedback.errors import (
    FeedbackError,
    NotFoundError,
    QuotaExceededError,
    StorageFullError,
    StoreTooNewError,
    StoreUnavailableError,
)
from imgclf.feedback.limits import Quota
from imgclf.feedback.paths import default_store_dir, sqlite_url
from imgclf.feedback.schema import (
    CLIENT_MAX,
    LABEL_MAX,
    NAME_MAX,
    STATUSES,
    Blob,
    Feedback,
    PredictionLog,
    Status,
)

log = logging.getLogger("imgclf.feedback")

LIST_MAX = 1000


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Record:
    """A feedback record as callers see it (detached from the database)."""

    id: int
    sha256: str
    model: str
    version: str
    label: str
    predicted_label: str | None
    predicted_score: float | None
    client: str
    submitted_by: str | None
    status: str
    created_at: str
    reviewed_at: str | None
    reviewed_by: str | None

    @classmethod
    def of(cls, f: Feedback) -> Record:
        created = _iso(f.created_at)
        assert created is not None
        return cls(id=f.id, sha256=f.sha256, model=f.model, version=f.version, label=f.label,
                   predicted_label=f.predicted_label, predicted_score=f.predicted_score, client=f.client,
                   submitted_by=f.submitted_by, status=f.status, created_at=created,
                   reviewed_at=_iso(f.reviewed_at), reviewed_by=f.reviewed_by)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usage:
    records: int
    bytes: int


def _check_text(value: str, what: str, limit: int) -> str:
    if not value or len(value) > limit or "\x00" in value:
        raise FeedbackError(f"{what} must be 1 to {limit} characters without NUL")
    return value


ID_MAX = 2**63 - 1


def check_ids(ids: Sequence[int]) -> builtins.list[int]:
    """Distinct record ids, sorted; an id no database column can hold is refused."""
    wanted = sorted(set(ids))
    bad = [i for i in wanted if not 1 <= i <= ID_MAX]
    if bad:
        raise FeedbackError(f"not a feedback record id: {bad[0]}")
    return wanted


def check_status(value: str) -> Status:
    for s in STATUSES:
        if value == s:
            return s
    raise FeedbackError(f"unknown status {value!r}: use one of {', '.join(STATUSES)}")


class FeedbackStore:
    """A database (SQLite by default, PostgreSQL by URL) plus a folder of images by content hash."""

    def __init__(self, engine: Engine, blobs: BlobStore, quota: Quota, url: str) -> None:
        self.engine = engine
        self.blobs = blobs
        self.quota = quota
        self.url = url
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, db_url: str | None = None, store_dir: Path | None = None, quota: Quota | None = None) -> FeedbackStore:
        """Open (and create or upgrade) the store: ``store_dir`` holds the images and, without
        ``db_url``, the SQLite database ``feedback.db``."""
        folder = Path(store_dir) if store_dir is not None else default_store_dir()
        url = db_url or sqlite_url(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FeedbackError(f"cannot create the feedback store folder {folder}: {exc.strerror}") from None
        engine = make_engine(url)
        try:
            migrate.upgrade(engine)
        except StoreTooNewError:
            engine.dispose()
            raise
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreUnavailableError(f"the feedback database {redact(url)} is unavailable: "
                                        f"{_reason(exc)}") from None
        store = cls(engine, BlobStore(folder / "images"), quota or Quota(), url)
        store.blobs.sweep_tmp()
        return store

    def close(self) -> None:
        self.engine.dispose()

    @property
    def where(self) -> str:
        return redact(self.url)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A session whose database errors become the store's own (503 at the server)."""
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as exc:
            reason = _reason(exc)
            if "disk is full" in reason or "disk I/O error" in reason:
                raise StorageFullError(f"the feedback database cannot write: {reason}") from None
            log.warning("feedback database error: %s", reason)
            raise StoreUnavailableError(f"the feedback database is unavailable: {reason}") from None

    # -- writing ---------------------------------------------------------------------------

    def record(self, *, model: str, version: str, label: str, client: str, image: bytes | None = None,
               sha256: str | None = None, predicted_label: str | None = None,
               predicted_score: float | None = None, submitted_by: str | None = None) -> tuple[Record, bool]:
        """Store one correction; returns (record, created). The image is ``image`` (its bytes) or
        ``sha256`` (one already in the store). The same pending correction from the same client
        again returns the first record (created False), so a client may safely retry."""
        _check_text(model, "the model name", NAME_MAX)
        _check_text(version, "the model version", NAME_MAX)
        _check_text(label, "the label", LABEL_MAX)
        client = client[:CLIENT_MAX] or "unknown"
        if predicted_label is not None:
            _check_text(predicted_label, "the predicted label", LABEL_MAX)
        if submitted_by is not None:
            _check_text(submitted_by, "the submitter", CLIENT_MAX)
        if image is not None:
            h = sha256_hex(image)
        elif sha256 is not None:
            h = check_sha256(sha256)
        else:
            raise FeedbackError("a correction needs its image or the SHA-256 of one in the store")
        for attempt in range(3):
            try:
                return self._record(h, image, model=model, version=version, label=label, client=client,
                                    predicted_label=predicted_label, predicted_score=predicted_score,
                                    submitted_by=submitted_by)
            except IntegrityError:
                # Another process stored the same image between our read and our insert: read again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record(self, h: str, image: bytes | None, **fields: Any) -> tuple[Record, bool]:
        with self._session() as s, s.begin():
            same = s.scalars(select(Feedback).where(
                Feedback.sha256 == h, Feedback.model == fields["model"], Feedback.version == fields["version"],
                Feedback.label == fields["label"], Feedback.client == fields["client"],
                Feedback.status == "pending").limit(1)).first()
            if same is not None:
                return Record.of(same), False
            blob = s.get(Blob, h)
            on_disk = blob is not None and self.blobs.exists(h)
            if image is None and not on_disk:
                raise NotFoundError(f"no image {h} in the feedback store; send the image itself")
            self._check_quota(s, len(image) if blob is None and image is not None else 0)
            if image is not None and not on_disk:
                # On disk before the commit that cites it. A new image is written even over a file
                # already there: that may be one a concurrent delete has yet to take away.
                self.blobs.put(image, replace=blob is None)
            if blob is None:
                assert image is not None
                s.add(Blob(sha256=h, size=len(image)))
                s.flush()
            row = Feedback(sha256=h, status="pending", **fields)
            s.add(row)
            s.flush()
            return Record.of(row), True

    def _check_quota(self, s: Session, new_bytes: int) -> None:
        q = self.quota
        if q.max_records is not None:
            n = s.scalar(select(func.count()).select_from(Feedback)) or 0
            if n + 1 > q.max_records:
                raise QuotaExceededError(f"the feedback store holds its quota of {q.max_records} records; "
                                         "review and delete some, or raise the quota")
        if q.max_bytes is not None and new_bytes:
            used = s.scalar(select(func.coalesce(func.sum(Blob.size), 0))) or 0
            if used + new_bytes > q.max_bytes:
                raise QuotaExceededError(f"the feedback store's images would exceed its quota of "
                                         f"{q.max_bytes} bytes; review and delete some, or raise the quota")

    def set_status(self, ids: Sequence[int], status: str, by: str) -> list[Record]:
        """Accept or reject (or reset to pending) the records ``ids``; all of them exist or none changes."""
        new = check_status(status)
        wanted = check_ids(ids)
        with self._session() as s, s.begin():
            rows = list(s.scalars(select(Feedback).where(Feedback.id.in_(wanted))))
            missing = sorted(set(wanted) - {r.id for r in rows})
            if missing:
                raise NotFoundError(f"no feedback record {', '.join(map(str, missing[:20]))}")
            now = dt.datetime.now(dt.UTC)
            for r in rows:
                r.status, r.reviewed_at, r.reviewed_by = new, now, by[:CLIENT_MAX]
            s.flush()
            return [Record.of(r) for r in sorted(rows, key=lambda r: r.id)]

    def set_status_where(self, status: str, by: str, *, current: str = "pending", model: str | None = None,
                         version: str | None = None) -> int:
        """Change every record in status ``current`` (of ``model``/``version``) to ``status``; returns how many."""
        new, old = check_status(status), check_status(current)
        stmt = update(Feedback).where(Feedback.status == old).values(
            status=new, reviewed_at=dt.datetime.now(dt.UTC), reviewed_by=by[:CLIENT_MAX])
        if model is not None:
            stmt = stmt.where(Feedback.model == model)
        if version is not None:
            stmt = stmt.where(Feedback.version == version)
        with self._session() as s, s.begin():
            return int(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def delete(self, ids: Sequence[int]) -> int:
        """Delete records, and the images no remaining record cites; returns how many records went."""
        wanted = check_ids(ids)
        trashed: list[tuple[Path, str]] = []
        try:
            self._delete(wanted, trashed)
        except BaseException:
            for path, h in trashed:  # the transaction failed: the records still cite these
                self.blobs.restore(path, h)
            raise
        for path, _ in trashed:
            path.unlink(missing_ok=True)
        return len(wanted)

    def _delete(self, wanted: builtins.list[int], trashed: builtins.list[tuple[Path, str]]) -> None:
        with self._session() as s, s.begin():
            found = {i: h for i, h in s.execute(select(Feedback.id, Feedback.sha256).where(Feedback.id.in_(wanted)))}
            missing = [i for i in wanted if i not in found]
            if missing:
                raise NotFoundError(f"no feedback record {', '.join(map(str, missing[:20]))}")
            s.execute(delete(Feedback).where(Feedback.id.in_(wanted)))
            hashes = set(found.values())
            cited = set(s.scalars(select(Feedback.sha256).where(Feedback.sha256.in_(hashes))))
            orphans = sorted(hashes - cited)
            if orphans:
                s.execute(delete(Blob).where(Blob.sha256.in_(orphans)))
                s.flush()
            # Out of sight before the commit (while SQLite's write lock keeps writers out), deleted
            # after it: a writer that stores the same image after this commit writes a new file.
            for h in orphans:
                path = self.blobs.trash(h)
                if path is not None:
                    trashed.append((path, h))

    def log_prediction(self, *, model: str, version: str, sha256: str, top_k: list[dict[str, Any]],
                       decode_ms: float, batch_ms: float, total_ms: float) -> None:
        with self._session() as s, s.begin():
            s.add(PredictionLog(model=model, version=version, sha256=check_sha256(sha256),
                                top_k=json.dumps(top_k), decode_ms=decode_ms, batch_ms=batch_ms, total_ms=total_ms))

    # -- reading ---------------------------------------------------------------------------

    def _filtered(self, stmt: Select[Any], status: str | None, model: str | None,
                  version: str | None) -> Select[Any]:
        if status is not None:
            stmt = stmt.where(Feedback.status == check_status(status))
        if model is not None:
            stmt = stmt.where(Feedback.model == model)
        if version is not None:
            stmt = stmt.where(Feedback.version == version)
        return stmt

    def list(self, *, status: str | None = None, model: str | None = None, version: str | None = None,
             limit: int = 100, offset: int = 0, ids: Sequence[int] | None = None) -> tuple[list[Record], int]:
        """Records (oldest first) and how many match in all."""
        if not 1 <= limit <= LIST_MAX or not 0 <= offset <= ID_MAX:
            raise FeedbackError(f"limit must be 1 to {LIST_MAX} and offset not negative")
        q = self._filtered(select(Feedback), status, model, version)
        n = self._filtered(select(func.count()).select_from(Feedback), status, model, version)
        if ids is not None:
            q, n = q.where(Feedback.id.in_(list(ids))), n.where(Feedback.id.in_(list(ids)))
        with self._session() as s:
            rows = list(s.scalars(q.order_by(Feedback.id).limit(limit).offset(offset)))
            total = s.scalar(n) or 0
            return [Record.of(r) for r in rows], int(total)

    def iter_records(self, *, status: str | None = None, model: str | None = None,
                     version: str | None = None) -> Iterator[Record]:
        """Every matching record, oldest first, read a page at a time."""
        after = 0
        while True:
            q = self._filtered(select(Feedback), status, model, version)
            with self._session() as s:
                rows = [Record.of(r) for r in s.scalars(q.where(Feedback.id > after).order_by(Feedback.id)
                                                        .limit(LIST_MAX))]
            if not rows:
                return
            yield from rows
            after = rows[-1].id

    def get(self, record_id: int) -> Record:
        check_ids([record_id])
        with self._session() as s:
            row = s.get(Feedback, record_id)
            if row is None:
                raise NotFoundError(f"no feedback record {record_id}")
            return Record.of(row)

    def image(self, record_id: int) -> bytes:
        return self.blobs.read(self.get(record_id).sha256)

    def has_image(self, sha256: str) -> bool:
        with self._session() as s:
            return s.get(Blob, check_sha256(sha256)) is not None and self.blobs.exists(sha256)

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Records by (model, version, status): one grouped query."""
        with self._session() as s:
            rows = s.execute(select(Feedback.model, Feedback.version, Feedback.status, func.count())
                             .group_by(Feedback.model, Feedback.version, Feedback.status))
            return {(m, v, st): int(n) for m, v, st, n in rows}

    def usage(self) -> Usage:
        with self._session() as s:
            records = s.scalar(select(func.count()).select_from(Feedback)) or 0
            size = s.scalar(select(func.coalesce(func.sum(Blob.size), 0))) or 0
            return Usage(records=int(records), bytes=int(size))

    def predictions(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The newest entries of the prediction log."""
        with self._session() as s:
            rows = s.scalars(select(PredictionLog).order_by(PredictionLog.id.desc()).limit(limit))
            return [{"id": r.id, "model": r.model, "version": r.version, "sha256": r.sha256,
                     "top_k": json.loads(r.top_k), "decode_ms": r.decode_ms, "batch_ms": r.batch_ms,
                     "total_ms": r.total_ms, "created_at": _iso(r.created_at)} for r in rows]


def _reason(exc: SQLAlchemyError) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe(url: str | None, store_dir: Path | None) -> str:
    """Where a store with these settings lives, for messages."""
    folder = Path(store_dir) if store_dir is not None else default_store_dir()
    return redact(url) if url and not is_sqlite(url) else str(folder)
