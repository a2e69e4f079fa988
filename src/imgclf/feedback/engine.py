"""Database connections: SQLite in WAL mode (the default) or PostgreSQL by URL.

SQLite: WAL lets readers run beside the one writer; ``synchronous=FULL`` makes a commit durable
before it returns (an acknowledged correction survives a crash); every transaction starts with
``BEGIN IMMEDIATE`` so two processes writing the same file queue on the busy timeout instead of
failing with "database is locked" when a reader upgrades to a writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from imgclf.feedback.errors import FeedbackError

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # the driver's own implicit BEGIN is replaced by ours below
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://user@host/db``)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise FeedbackError(f"not a database URL: {url!r} (use sqlite:///PATH or "
                            "postgresql+psycopg://USER@HOST/DB)") from None
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
            return engine
        if backend == "postgresql":
            return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=10,
                                 connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise FeedbackError(f"no driver for {redact(url)}: {exc} (PostgreSQL needs psycopg: "
                            "pip install 'imgclf[feedback]')") from None
    raise FeedbackError(f"unsupported database {backend!r} in {redact(url)}: use SQLite or PostgreSQL")
