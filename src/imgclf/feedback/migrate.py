"""Schema upgrades: the store runs Alembic's ``upgrade head`` when it opens, under a lock.

Two processes opening one store at once must not both create its tables: on SQLite a file lock
beside the database serialises them, on PostgreSQL a session advisory lock does. A store whose
revision this imgclf does not know was written by a later version: it is refused, never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, text

from imgclf.feedback.errors import StoreTooNewError

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "feedback_schema_version"
# pg_advisory_lock key: any constant, the same in every imgclf ("imgclf-fb" as bytes).
PG_LOCK_KEY = 0x696D67636C66_6662 & 0x7FFFFFFFFFFFFFFF


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sqlite_file(engine: Engine) -> Path | None:
    db = engine.url.database
    return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the store's schema to ``revision`` (the newest by default), holding the migration lock."""
    if engine.dialect.name == "sqlite":
        db = _sqlite_file(engine)
        lock = _file_lock(db.with_name(db.name + ".migrate-lock")) if db else contextlib.nullcontext()
        with lock, engine.connect() as conn:
            _upgrade(conn, revision)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
        conn.commit()
        try:
            _upgrade(conn, revision)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()


def _upgrade(conn: Connection, revision: str) -> None:
    found = current(conn)
    conn.commit()  # end the read's transaction: Alembic begins its own
    scripts = ScriptDirectory.from_config(_config())
    if found is not None:
        try:
            scripts.get_revision(found)
        except (CommandError, RevisionError):
            raise StoreTooNewError(
                f"the feedback store is at schema revision {found!r}, which this imgclf does not know "
                f"(it knows up to {head()!r}): a later imgclf wrote it; upgrade imgclf to open it") from None
    if found == revision or (revision == "head" and found == scripts.get_current_head()):
        return
    command.upgrade(_config(conn), revision)
    conn.commit()
