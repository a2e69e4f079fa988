"""A PostgreSQL server for tests: ``$IMGCLF_TEST_PG_URL``, else a throwaway cluster started from
Debian's ``postgresql`` package (initdb refuses root, so as root it runs as the ``postgres`` user).
Where neither is possible the tests that need it skip and say why."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_support import free_port

ENV = "IMGCLF_TEST_PG_URL"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    if user is None:
        return cmd
    runuser = shutil.which("runuser")
    return [runuser, "-u", user, "--", *cmd] if runuser else ["su", user, "-s", "/bin/sh", "-c", " ".join(cmd)]


@contextmanager
def throwaway_cluster(durable: bool = False) -> Iterator[str]:
    """Start a cluster on a free port, listening on a Unix socket in its own folder; yields its URL
    (or raises RuntimeError saying why not). Tests run it with fsync off (``durable``: on)."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql), and $IMGCLF_TEST_PG_URL is unset")
    user = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user for initdb") from None
        user = "postgres"
    tmp = Path(tempfile.mkdtemp(prefix="imgclf-pg-"))
    if user is not None:
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    data, port = tmp / "data", free_port()
    log = tmp / "server.log"
    try:
        r = subprocess.run(_as_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                     "--no-sync"], user), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        opts = f"-p {port} -k {tmp} -c listen_addresses=''" + ("" if durable else " -c fsync=off")
        r = subprocess.run(_as_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", f'"{opts}"' if user and
                                     not shutil.which("runuser") else opts, "-w", "start"], user),
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-500:]} {log.read_text()[-500:] if log.exists() else ''}")
        try:
            yield f"postgresql+psycopg://postgres@/postgres?host={tmp}&port={port}"
        finally:
            subprocess.run(_as_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], user),
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def create_database(server_url: str) -> tuple[str, str]:
    """A fresh database on the server: (its URL, its name)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = "imgclf_test_" + uuid.uuid4().hex[:12]
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False), name


def drop_database(server_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        for _ in range(20):
            try:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                return
            except Exception:  # noqa: BLE001 - a lingering connection: try again shortly
                time.sleep(0.2)
    finally:
        admin.dispose()
