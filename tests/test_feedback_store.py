"""The feedback store on its own: records and review, quota, atomic image files, migrations,
export with its manifest, the CLI, and the same on PostgreSQL where one is available."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from imgclf.cli import main  # noqa: E402
from imgclf.feedback import (  # noqa: E402
    FeedbackError,
    NotFoundError,
    QuotaExceededError,
    StorageFullError,
    StoreTooNewError,
)
from imgclf.feedback import blobs as blobs_mod  # noqa: E402
from imgclf.feedback import migrate as migrate  # noqa: E402
from imgclf.feedback.engine import make_engine  # noqa: E402
from imgclf.feedback.export import MANIFEST, export, label_dir, read_manifest  # noqa: E402
from imgclf.feedback.limits import Quota, RateLimiter  # noqa: E402
from imgclf.feedback.paths import sqlite_url  # noqa: E402
from imgclf.feedback.store import FeedbackStore  # noqa: E402


def png(seed: int, size: int = 12) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    s = FeedbackStore.open(url, tmp_path / "store")
    yield s
    s.close()


def add(store: FeedbackStore, seed: int, label: str = "cat", **kw) -> int:
    record, created = store.record(model=kw.pop("model", "m"), version=kw.pop("version", "1"), label=label,
                                   client=kw.pop("client", "10.0.0.1"), image=png(seed), **kw)
    assert created
    return record.id


def test_record_review_delete(store):
    a = add(store, 1, predicted_label="dog", predicted_score=0.75, submitted_by="ann")
    b = add(store, 2, label="dog", model="other")
    records, total = store.list(status="pending")
    assert total == 2 and [r.id for r in records] == [a, b]
    first = records[0]
    assert (first.label, first.predicted_label, first.predicted_score, first.submitted_by) == ("cat", "dog", 0.75, "ann")
    assert first.sha256 == hashlib.sha256(png(1)).hexdigest()
    assert store.image(a) == png(1)  # the original bytes

    [accepted] = store.set_status([a], "accepted", "cli:test")
    assert accepted.status == "accepted" and accepted.reviewed_by == "cli:test" and accepted.reviewed_at
    assert store.list(status="accepted")[1] == 1
    assert store.counts() == {("m", "1", "accepted"): 1, ("other", "1", "pending"): 1}
    with pytest.raises(NotFoundError, match="999"):
        store.set_status([a, 999], "rejected", "x")
    assert store.get(a).status == "accepted"  # all or nothing
    with pytest.raises(FeedbackError, match="unknown status"):
        store.set_status([a], "maybe", "x")

    assert store.set_status_where("rejected", "x", model="other") == 1
    assert store.get(b).status == "rejected"

    path = store.blobs.path(first.sha256)
    assert store.delete([a]) == 1 and not path.exists()
    with pytest.raises(NotFoundError):
        store.get(a)
    assert store.usage().records == 1


def test_same_image_stored_once_and_retries_are_idempotent(store):
    r1, c1 = store.record(model="m", version="1", label="cat", client="c1", image=png(5))
    r2, c2 = store.record(model="m", version="1", label="cat", client="c1", image=png(5))
    assert c1 and not c2 and r1.id == r2.id  # a client's retry returns the first record
    r3, c3 = store.record(model="m", version="1", label="dog", client="c2", sha256=r1.sha256)
    assert c3 and r3.sha256 == r1.sha256
    assert store.usage().bytes == len(png(5))  # one file for both
    store.delete([r1.id])
    assert store.blobs.exists(r1.sha256)  # still cited by r3
    store.delete([r3.id])
    assert not store.blobs.exists(r1.sha256)
    with pytest.raises(NotFoundError, match="send the image"):
        store.record(model="m", version="1", label="dog", client="c2", sha256=r1.sha256)


def test_bad_fields_are_refused(store):
    for kw in ({"label": ""}, {"label": "x" * 501}, {"model": "a\x00b"}):
        with pytest.raises(FeedbackError):
            store.record(**{"model": "m", "version": "1", "label": "cat", "client": "c", "image": png(1), **kw})
    with pytest.raises(ValueError, match="SHA-256"):
        store.record(model="m", version="1", label="cat", client="c", sha256="../../etc/passwd")
    assert store.usage().records == 0


def test_quota_in_records_and_bytes(tmp_path):
    s = FeedbackStore.open(None, tmp_path, Quota(max_records=2, max_bytes=None))
    add(s, 1), add(s, 2)
    with pytest.raises(QuotaExceededError, match="2 records"):
        add(s, 3)
    s.close()
    s = FeedbackStore.open(None, tmp_path / "b", Quota(max_records=None, max_bytes=len(png(1)) + 10))
    add(s, 1)
    with pytest.raises(QuotaExceededError, match="bytes"):
        add(s, 2)
    assert s.usage().records == 1 and list(s.blobs.files())[0][0] == hashlib.sha256(png(1)).hexdigest()
    s.close()


def test_full_disk_leaves_no_partial_file_and_no_record(tmp_path, monkeypatch):
    s = FeedbackStore.open(None, tmp_path)
    kept = add(s, 1)
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])  # half the file reaches the disk, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs_mod.os, "write", full)
    with pytest.raises(StorageFullError, match="No space left"):
        add(s, 2)
    monkeypatch.undo()
    assert [r.id for r in s.list()[0]] == [kept]
    assert not list(s.blobs.tmp.iterdir())  # the half-written temporary file is gone
    assert [name for name, _ in s.blobs.files()] == [hashlib.sha256(png(1)).hexdigest()]
    s.close()


def test_gc_removes_only_old_uncited_files(store, capsys):
    cited = add(store, 1)
    old_orphan = store.blobs.put(png(2))  # a crash between the file and its commit leaves this
    new_orphan = store.blobs.put(png(3))  # this one's commit may still be under way
    os.utime(store.blobs.path(old_orphan), (1, 1))
    os.utime(store.blobs.path(store.get(cited).sha256), (1, 1))
    assert store.collect_garbage() == (1, len(png(2)))
    assert not store.blobs.exists(old_orphan) and store.blobs.exists(new_orphan)
    assert store.image(cited) == png(1)


def test_stale_temporary_files_are_swept(tmp_path):
    s = FeedbackStore.open(None, tmp_path)
    s.blobs.tmp.mkdir(parents=True, exist_ok=True)
    old, fresh = s.blobs.tmp / "a.tmp", s.blobs.tmp / "b.tmp"
    old.write_bytes(b"half"), fresh.write_bytes(b"writing")
    os.utime(old, (1, 1))
    assert s.blobs.sweep_tmp() == 1 and not old.exists() and fresh.exists()
    s.close()


def test_threads_writing_at_once_lose_nothing(store):
    ids: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(15):
            r, _ = store.record(model="m", version="1", label="cat", client=f"c{k}", image=png(1000 * k + i))
            with lock:
                ids.append(r.id)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 60
    assert sorted(r.id for r in store.iter_records()) == sorted(ids)


def test_upgrade_from_revision_0001_keeps_the_data(tmp_path):
    url = sqlite_url(tmp_path)
    engine = make_engine(url)
    migrate.upgrade(engine, "0001")  # a store as the first release wrote it
    from sqlalchemy import inspect, text

    assert "prediction_log" not in inspect(engine).get_table_names()
    with engine.begin() as c:
        c.execute(text("INSERT INTO feedback_blobs (sha256, size, created_at) VALUES (:h, 3, '2026-01-01 00:00:00')"),
                  {"h": "a" * 64})
        c.execute(text("INSERT INTO feedback (sha256, model, version, label, client, status, created_at) "
                       "VALUES (:h, 'm', '1', 'cat', 'c', 'accepted', '2026-01-01 00:00:00')"), {"h": "a" * 64})
    engine.dispose()
    s = FeedbackStore.open(None, tmp_path)  # upgrades to head
    [r] = s.list()[0]
    assert (r.label, r.status, r.created_at) == ("cat", "accepted", "2026-01-01T00:00:00.000000Z")
    s.log_prediction(model="m", version="1", sha256="a" * 64, top_k=[], decode_ms=1, batch_ms=1, total_ms=2)
    assert len(s.predictions()) == 1
    s.close()
    engine = make_engine(url)
    with engine.connect() as c:
        assert migrate.current(c) == migrate.head()
    engine.dispose()


def test_a_store_from_a_later_version_is_refused(tmp_path):
    FeedbackStore.open(None, tmp_path).close()
    engine = make_engine(sqlite_url(tmp_path))
    from sqlalchemy import text

    with engine.begin() as c:
        c.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreTooNewError, match="9999.*upgrade imgclf"):
        FeedbackStore.open(None, tmp_path)


def test_bad_database_urls(tmp_path):
    with pytest.raises(FeedbackError, match="not a database URL"):
        FeedbackStore.open("nonsense", tmp_path)
    with pytest.raises(FeedbackError, match="unsupported database"):
        FeedbackStore.open("mysql://u@h/db", tmp_path)


def test_export_writes_label_folders_and_manifest(tmp_path):
    s = FeedbackStore.open(None, tmp_path / "store")
    a = add(s, 1, label="cat")  # PNG: re-encoded as JPEG
    r_jpeg, _ = s.record(model="m", version="2", label="dog", client="c", image=jpeg(2))
    add(s, 3, label="cat")  # stays pending: not exported
    b = add(s, 4, label="a/../b")  # a label that looks like a path
    s.set_status([a, r_jpeg.id, b], "accepted", "t")
    train = tmp_path / "train"
    for cls, seed in (("cat", 10), ("bird", 11)):
        (train / cls).mkdir(parents=True)
        (train / cls / "orig.jpg").write_bytes(jpeg(seed))
    out = tmp_path / "export"
    result = export(s, out, merge_with=train)
    assert (result.records, result.files, result.merged_files) == (3, 3, 2)
    manifest = read_manifest(out)
    assert manifest["kind"] == "imgclf-feedback-export" and manifest["merged_with"] == str(train.resolve())
    by_id = {r["id"]: r for r in manifest["records"]}
    assert set(by_id) == {a, r_jpeg.id, b}
    assert by_id[r_jpeg.id] == {"id": r_jpeg.id, "sha256": r_jpeg.sha256, "label": "dog", "model": "m",
                                "version": "2", "file": f"dog/{r_jpeg.sha256}.jpg"}
    assert (out / by_id[r_jpeg.id]["file"]).read_bytes() == jpeg(2)  # a JPEG is copied byte for byte
    with Image.open(out / by_id[a]["file"]) as im:
        assert im.format == "JPEG" and im.size == (12, 12)
    assert by_id[b]["file"].startswith(label_dir("a/../b") + "/") and "/" not in label_dir("a/../b")
    assert (out / "bird" / "orig.jpg").exists() and (out / "cat" / "orig.jpg").exists()
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    with pytest.raises(FeedbackError, match="not an empty folder"):
        export(s, out)
    with pytest.raises(FeedbackError, match="no accepted feedback of x"):
        export(s, tmp_path / "none", model="x")
    s.close()


def test_label_dir_never_escapes():
    for label in ("..", ".", "a/b", "..\\x", " pad ", "nul\x00"):
        name = label_dir(label)
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\x00" not in name


def test_long_labels_export_into_distinct_folders_the_file_system_takes(tmp_path):
    s = FeedbackStore.open(None, tmp_path / "store")
    labels = ["é" * 200 + "cat", "é" * 200 + "dog"]  # 403 bytes each, the same first 255
    for i, label in enumerate(labels):
        record, _ = s.record(model="m", version="1", label=label, client="c", image=png(i))
        s.set_status([record.id], "accepted", "test")
    result = export(s, tmp_path / "out")
    folders = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert result.files == 2 and len(folders) == 2
    assert all(len(p.name.encode()) <= 255 and len(list(p.iterdir())) == 1 for p in folders)
    s.close()


def test_rate_limiter_is_per_client_and_refills():
    rl = RateLimiter(per_minute=60, burst=2, max_clients=3)
    assert rl.take("a", now=0) == 0 and rl.take("a", now=0) == 0
    assert rl.take("a", now=0) == pytest.approx(1.0)
    assert rl.take("b", now=0) == 0  # another client has its own bucket
    assert rl.take("a", now=1.0) == 0  # one token a second
    for c in "cdef":
        rl.take(c, now=2)
    assert len(rl._buckets) == 3  # bounded


def cli(*args: str) -> int:
    return main(["feedback", *args])


def test_cli_list_accept_reject_export(tmp_path, capsys):
    store_dir = tmp_path / "store"
    s = FeedbackStore.open(None, store_dir)
    ids = [add(s, i, label=lbl, model=m) for i, (lbl, m) in enumerate([("cat", "m"), ("dog", "m"), ("cat", "n")])]
    s.close()
    st = ["--store", str(store_dir)]
    assert cli("list", *st) == 0
    out = capsys.readouterr().out
    assert "3 of 3 record(s)" in out and "pending" in out
    assert cli("accept", str(ids[0]), *st) == 0
    assert cli("reject", "--all-pending", "--model", "n", *st) == 0
    assert "rejected 1 record(s)" in capsys.readouterr().out
    assert cli("list", "--status", "pending", "--json", *st) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [ids[1]]
    assert cli("accept", *st) == 2
    assert "give record ids or --all-pending" in capsys.readouterr().err
    assert cli("accept", "12345", *st) == 2
    assert "no feedback record 12345" in capsys.readouterr().err
    assert cli("export", "--out", str(tmp_path / "ex"), *st) == 0
    assert "exported 1 accepted record(s)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "ex" / MANIFEST).read_text())
    assert [r["id"] for r in manifest["records"]] == [ids[0]] and manifest["merged_with"] is None
    assert cli("delete", str(ids[2]), *st) == 0
    assert cli("gc", *st) == 0
    assert "removed 0 image file(s)" in capsys.readouterr().out
    assert cli("list", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/x", *st) == 2
    assert "unavailable" in capsys.readouterr().err


def test_first_open_from_several_processes_at_once_creates_the_schema_once(request, tmp_path):
    """The migration lock: four openers racing on a new store all succeed (SQLite, and PostgreSQL when present)."""
    import subprocess
    import sys

    urls = [None]
    try:
        urls.append(request.getfixturevalue("pg_url"))
    except pytest.skip.Exception:
        pass
    for i, url in enumerate(urls):
        code = ("import sys; from pathlib import Path; from imgclf.feedback.store import FeedbackStore; "
                "s = FeedbackStore.open(sys.argv[1] or None, Path(sys.argv[2])); "
                "s.record(model='m', version='1', label='x', client=sys.argv[3], image=sys.argv[3].encode()); s.close()")
        procs = [subprocess.Popen([sys.executable, "-c", code, url or "", str(tmp_path / f"s{i}"), f"p{k}"],
                                  stderr=subprocess.PIPE) for k in range(4)]
        errs = [p.communicate(timeout=120)[1].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), errs
        s = FeedbackStore.open(url, tmp_path / f"s{i}")
        assert s.usage().records == 4
        s.close()


def test_a_failed_delete_keeps_the_image(store):
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    rid = add(store, 1)
    h = store.get(rid).sha256

    def fail(session):
        raise OSError(errno.EIO, "I/O error")  # the commit fails after the file went out of sight

    event.listen(Session, "before_commit", fail)
    try:
        with pytest.raises(OSError):
            store.delete([rid])
    finally:
        event.remove(Session, "before_commit", fail)
    assert store.get(rid).sha256 == h and store.image(rid) == png(1)
    assert not [p for p in store.blobs.tmp.iterdir() if p.name.endswith(".deleted")]
    store.delete([rid])
    assert not store.blobs.exists(h) and not list(store.blobs.tmp.iterdir())
