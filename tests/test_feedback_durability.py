"""Nothing acknowledged is lost: ``imgclf serve --feedback`` killed (SIGKILL) while several clients
post 500 corrections keeps every correction it answered 2xx, and no image file is half-written;
two server processes writing one store (SQLite, and PostgreSQL where available) lose nothing."""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image
from serve_support import live_server

pytest.importorskip("sqlalchemy")

from imgclf.feedback.store import FeedbackStore  # noqa: E402

pytestmark = pytest.mark.slow

CLIENTS = 6
# The test's clients all come from 127.0.0.1: the per-client limit is lifted so it does not interfere.
NO_LIMIT = ["--feedback-rate", "1000000", "--feedback-burst", "1000000"]


def images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Posting:
    """``CLIENTS`` threads posting corrections for ``todo`` (indices into ``imgs``) to ``urls`` in turn."""

    def __init__(self, urls: list[str], imgs: list[bytes], todo: list[int]) -> None:
        self.urls, self.imgs = urls, imgs
        self.todo = iter(todo)
        self.lock = threading.Lock()
        self.acked: dict[int, dict] = {}  # image index -> the record the server acknowledged
        self.failed: list[int] = []
        self.threads = [threading.Thread(target=self.client, args=(k,)) for k in range(CLIENTS)]

    def next(self) -> int | None:
        with self.lock:
            return next(self.todo, None)

    def client(self, k: int) -> None:
        urls = itertools.cycle(self.urls[k % len(self.urls):] + self.urls[:k % len(self.urls)])
        with httpx.Client(timeout=30) as http:
            while (i := self.next()) is not None:
                try:
                    r = http.post(next(urls) + "/v1/models/tiny/feedback", data={"label": "b", "submitted_by": f"c{k}"},
                                  files={"file": (f"{i}.png", self.imgs[i], "image/png")})
                except httpx.TransportError:
                    with self.lock:
                        self.failed.append(i)
                    continue
                with self.lock:
                    if r.status_code in (200, 201):
                        self.acked[i] = r.json()
                    else:
                        self.failed.append(i)

    def start(self) -> Posting:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> Posting:
        for t in self.threads:
            t.join(timeout=300)
        return self


def check_store(store_dir: Path, db: str | None, imgs: list[bytes], acked: dict[int, dict]) -> FeedbackStore:
    """Every acknowledged record is there with its image, and every image file is whole."""
    store = FeedbackStore.open(db, store_dir)
    records = {r.id: r for r in store.iter_records()}
    for i, rec in acked.items():
        assert rec["id"] in records, f"acknowledged correction {rec['id']} (image {i}) is missing"
        assert records[rec["id"]].sha256 == hashlib.sha256(imgs[i]).hexdigest() == rec["sha256"]
        assert store.blobs.read(rec["sha256"]) == imgs[i]
    for name, path in store.blobs.files():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name, f"{path} is not whole"
    # A killed writer's leftovers stay in tmp/, never under a hash; nothing else is in the tree.
    stray = [p for p in store.blobs.root.rglob("*") if p.is_file() and p.parent != store.blobs.tmp
             and not p.name.isalnum()]
    assert not stray, stray
    return store


def test_sigkill_mid_stream_loses_no_acknowledged_correction(serve_model_dir, tmp_path):
    imgs = images(500)
    store_dir = tmp_path / "store"
    args = ["--model", str(serve_model_dir / "tiny"), "--feedback-store", str(store_dir), *NO_LIMIT]
    with live_server(*args) as server:
        posting = Posting([server.url], imgs, list(range(500))).start()
        # Kill once a good part is acknowledged and the clients are still sending.
        for _ in range(6000):
            with posting.lock:
                if len(posting.acked) >= 150:
                    break
            threading.Event().wait(0.01)
        server.proc.kill()
        server.proc.wait()
        posting.join()
    assert 150 <= len(posting.acked) < 500, len(posting.acked)
    assert posting.failed  # the kill cut some corrections off
    check_store(store_dir, None, imgs, posting.acked).close()

    # Restarted, the server takes the rest; a correction stored but never acknowledged is not doubled.
    with live_server(*args) as server:
        rest = Posting([server.url], imgs, sorted(posting.failed)).start().join()
    assert not rest.failed
    store = check_store(store_dir, None, imgs, {**posting.acked, **rest.acked})
    records = list(store.iter_records())
    assert len(records) == 500 and len({r.sha256 for r in records}) == 500
    store.close()


def two_servers(serve_model_dir: Path, store_dir: Path, db: str | None) -> None:
    imgs = images(300, seed=1)
    args = ["--model", str(serve_model_dir / "tiny"), "--feedback-store", str(store_dir), *NO_LIMIT]
    if db:
        args += ["--db", db]
    with live_server(*args) as a, live_server(*args) as b:
        posting = Posting([a.url, b.url], imgs, list(range(300))).start().join()
    assert not posting.failed and len(posting.acked) == 300
    store = check_store(store_dir, db, imgs, posting.acked)
    assert store.usage().records == 300
    store.close()


def test_two_servers_share_a_sqlite_store(serve_model_dir, tmp_path):
    two_servers(serve_model_dir, tmp_path / "store", None)


def test_two_servers_share_a_postgresql_store(serve_model_dir, tmp_path, pg_url):
    two_servers(serve_model_dir, tmp_path / "store", pg_url)
