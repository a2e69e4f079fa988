"""Two ``imgclf serve`` replicas on one model store behind haproxy behave as one service: both take
traffic, stopping one (SIGTERM) during a load run fails no request, and a version loaded through
one replica's management API is served by both (the store is the source of truth). Corrections
sent through the balancer land in the one feedback database, under the client's own address."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from serve_support import build_tiny_package, free_port, jpeg_bytes, live_server

HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (Debian: apt-get install haproxy)")]

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
API_KEY = "replica-test-key"
# The replicas' drain settings (docs/deploy.md): readiness turns 503 at SIGTERM, the port closes a
# second later; the config's haproxy checks readiness every 200 ms, so it has taken the replica out by then.
REPLICA_FLAGS = ("--shutdown-delay", "1", "--graceful-timeout", "10")


def haproxy_config(port: int, backends: dict[str, int]) -> str:
    """deploy/haproxy/haproxy.cfg (what docs/deploy.md runs) with this test's ports."""
    text = CONFIG.read_text()
    text, binds = re.subn(r"(?m)^(\s*bind )\S+$", rf"\g<1>127.0.0.1:{port}", text)
    servers = "\n".join(f"  server {name} 127.0.0.1:{p} check" for name, p in backends.items())
    text, n = re.subn(r"(?m)(^\s*server .*\n?)+", servers + "\n", text)
    assert binds == 1 and n == 1, "deploy/haproxy/haproxy.cfg: one bind line and one block of server lines"
    return text


@contextlib.contextmanager
def haproxy(backends: dict[str, int]) -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="imgclf-haproxy-") as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, backends))
        check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(Path(tmp) / "haproxy.log", "wb")
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_all_up(url, set(backends))
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def wait_all_up(url: str, replicas: set[str], timeout_s: float = 60.0) -> None:
    """Until requests through the balancer have reached every replica (each passed its health check)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while seen != replicas:
        assert time.monotonic() < deadline, f"haproxy never sent to all of {replicas} (saw {seen})"
        try:
            r = httpx.get(url + "/v2/health/ready", timeout=2)
            if r.status_code == 200:
                seen.add(r.headers["x-replica"])
        except httpx.TransportError:
            pass
        time.sleep(0.05)


@contextlib.contextmanager
def two_replicas(model_dir: Path, *flags: str) -> Iterator[dict]:
    args = ("--model-dir", str(model_dir), "--api-key", API_KEY, *REPLICA_FLAGS, *flags)
    with live_server(*args) as a, live_server(*args) as b:
        yield {"a": a, "b": b}


def test_stopping_a_replica_under_load_fails_no_request(serve_model_dir):
    body = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    stop_after, after_exit, cap = 80, 40, 20_000
    results: list[tuple[int, str]] = []
    gone_at: list[int] = []  # how many requests had finished when replica a had exited
    lock = threading.Lock()

    with two_replicas(serve_model_dir) as replicas, haproxy({n: s.port for n, s in replicas.items()}) as url:
        a = replicas["a"]

        def worker() -> None:
            # The load runs until replica a has drained and exited, and then some: however fast
            # the machine, requests are in flight all through the drain.
            with httpx.Client(base_url=url, timeout=30) as client:
                while True:
                    with lock:
                        if (gone_at and len(results) >= gone_at[0] + after_exit) or len(results) >= cap:
                            return
                    try:
                        r = client.post("/v1/models/tiny/predict", content=body,
                                        headers={"Content-Type": "image/jpeg"})
                        outcome = (r.status_code, r.headers.get("x-replica", "?"))
                    except httpx.TransportError as exc:
                        outcome = (0, repr(exc))
                    with lock:
                        results.append(outcome)
                        if len(results) == stop_after:
                            a.proc.send_signal(signal.SIGTERM)  # mid-run, with requests in flight
                        if not gone_at and len(results) > stop_after and a.proc.poll() is not None:
                            gone_at.append(len(results))

        with ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(worker) for _ in range(4)]:
                f.result()
        assert gone_at, f"replica a had not exited after {len(results)} requests"
        assert a.proc.wait(timeout=30) == 0

    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert {name for _, name in results[:stop_after]} == {"a", "b"}  # round robin over both replicas
    assert {name for _, name in results[gone_at[0]:]} == {"b"}  # then b alone, without a failure


def _served_by(url: str, path: str, body: bytes, replicas: set[str], timeout_s: float = 60.0) -> dict[str, str]:
    """POST ``path`` through the balancer until every replica has answered 200; replica -> version."""
    versions: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as client:
        while set(versions) != replicas:
            assert time.monotonic() < deadline, f"{path}: only {versions} answered 200"
            r = client.post(path, content=body, headers={"Content-Type": "image/jpeg"})
            if r.status_code == 200:
                versions[r.headers["x-replica"]] = r.json()["version"]
            else:
                time.sleep(0.1)  # a replica that has not caught up with the store yet
    return versions


def test_a_version_loaded_on_one_replica_is_served_by_both(serve_model_dir, tmp_path):
    store = tmp_path / "models"
    shutil.copytree(serve_model_dir / "tiny", store / "tiny" / "1")
    (store / "tiny" / "versions.json").write_text('{"default": "1", "history": ["1"]}')
    body = jpeg_bytes(np.full((48, 48, 3), 150, np.uint8))
    auth = {"X-API-Key": API_KEY}

    with two_replicas(store, "--store-poll-s", "0.2") as replicas, \
            haproxy({n: s.port for n, s in replicas.items()}) as url:
        a, b = replicas["a"], replicas["b"]
        assert _served_by(url, "/v1/models/tiny/predict", body, {"a", "b"}) == {"a": "1", "b": "1"}
        # Version 2 is published into the store while both replicas run; neither serves it yet.
        build_tiny_package(store / "tiny" / "2", name="tiny", seed=7)
        assert httpx.post(b.url + "/v1/models/tiny/versions/2/predict", content=body,
                          headers={"Content-Type": "image/jpeg"}).status_code == 404

        # Loaded through replica a's management API only ...
        r = httpx.post(a.url + "/v2/repository/models/tiny/load", params={"version": "2"}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        # ... it is served by both, through the balancer.
        assert _served_by(url, "/v1/models/tiny/versions/2/predict", body, {"a", "b"}) == {"a": "2", "b": "2"}

        # Made the default through replica b: both answer the unversioned route with version 2.
        r = httpx.post(b.url + "/v1/models/tiny/default", json={"version": "2"}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 60
        while _served_by(url, "/v1/models/tiny/predict", body, {"a", "b"}) != {"a": "2", "b": "2"}:
            assert time.monotonic() < deadline, "the replicas never both served the new default"
            time.sleep(0.2)
        for replica in (a, b):
            assert httpx.get(replica.url + "/v1/models/tiny/versions").json()["default"] == "2"


def test_corrections_through_the_balancer_share_one_database_and_name_the_client(serve_model_dir, tmp_path):
    rng = np.random.default_rng(1)
    feedback = ("--feedback-store", str(tmp_path / "feedback"))  # its SQLite database, shared
    # The client connects from another loopback address than haproxy's, as a remote client would.
    client_address = "127.0.0.2"
    with two_replicas(serve_model_dir, *feedback) as replicas, \
            haproxy({n: s.port for n, s in replicas.items()}) as url, \
            httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=client_address)) as client:
        answers: dict[str, tuple[str, bytes]] = {}  # replica -> (prediction_id, image) of an answer it gave
        while set(answers) != {"a", "b"}:
            body = jpeg_bytes(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))  # distinct corrections
            r = client.post("/v1/models/tiny/predict", content=body, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200, r.text
            answers[r.headers["x-replica"]] = (r.json()["prediction_ids"][0], body)
        for replica, (prediction_id, body) in answers.items():
            # The web page's way: cite the prediction; a replica that did not make it asks for the image.
            r = client.post("/v1/models/tiny/feedback", json={"label": "b", "prediction_id": prediction_id,
                                                              "submitted_by": replica})
            if r.status_code == 404 and r.json()["error"]["code"] == "prediction_not_found":
                r = client.post("/v1/models/tiny/feedback", files={"file": ("x.jpg", body, "image/jpeg")},
                                data={"label": "b", "submitted_by": replica})
            assert r.status_code in (200, 201), r.text
        for replica in replicas.values():  # each replica sees every correction, whichever took it
            listed = httpx.get(replica.url + "/v1/feedback", headers={"X-API-Key": API_KEY}).json()
            assert {rec["submitted_by"] for rec in listed["records"]} == {"a", "b"}, listed
            assert {rec["client"] for rec in listed["records"]} == {client_address}, listed
