"""Model versions in the server: versioned routes, default switch and rollback through the
management API, no failed request during a switch, and several servers following one store."""

from __future__ import annotations

import base64
import shutil
import threading
import time

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import TINY_LABELS, assert_error, build_tiny_package, jpeg_bytes, live_server, wait_ready

from imgclf.model_store import ModelStore
from imgclf.server import ServerConfig, create_app

KEY = "versions-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def built(serve_model_dir, tmp_path_factory):
    """Version 2 of 'tiny': the same labels, other weights."""
    return build_tiny_package(tmp_path_factory.mktemp("v2") / "tiny", name="tiny", labels=TINY_LABELS, seed=7)


@pytest.fixture()
def model_dir(serve_model_dir, built, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(serve_model_dir / "tiny", root / "tiny" / "1")
    shutil.copytree(built, root / "tiny" / "2")
    (root / "tiny" / "versions.json").write_text('{"default": "1", "history": ["1"]}')
    shutil.copytree(serve_model_dir / "tiny", root / "other" / "1")  # a store no server loads at start
    return root


@pytest.fixture(scope="module")
def jpg():
    from skimage import data

    return jpeg_bytes(data.chelsea())


def _client(model_dir, poll_s: float = 0.0) -> TestClient:
    config = ServerConfig(models=(str(model_dir / "tiny"),), model_dir=str(model_dir), api_key=KEY,
                          store_poll_s=poll_s, max_batch_size=4)
    return TestClient(create_app(config))


def _predict(c: TestClient | httpx.Client, jpg: bytes, path: str = "/v1/models/tiny/predict"):
    return c.post(path, content=jpg, headers={"Content-Type": "image/jpeg"})


def test_versioned_routes_default_switch_and_rollback(model_dir, jpg):
    with _client(model_dir) as c:
        wait_ready(c)
        r = _predict(c, jpg)
        assert r.status_code == 200 and r.json()["version"] == "1" and r.headers["X-Model-Version"] == "1"
        assert c.get("/v1/models/tiny/versions").json() == {
            "name": "tiny", "default": "1", "previous": None, "loaded": ["1"], "available": ["1", "2"]}
        # Version 2 exists in the store but is not loaded until the management API loads it.
        assert_error(_predict(c, jpg, "/v1/models/tiny/versions/2/predict"), 404, "model_not_found")
        assert_error(c.post("/v2/repository/models/tiny/load?version=2"), 401)
        assert_error(c.post("/v2/repository/models/tiny/load?version=9", headers=AUTH), 404, "version_not_found")
        assert c.post("/v2/repository/models/tiny/load?version=2", headers=AUTH).json()["version"] == "2"
        v1 = _predict(c, jpg, "/v1/models/tiny/versions/1/predict").json()
        v2 = _predict(c, jpg, "/v1/models/tiny/versions/2/predict").json()
        assert (v1["version"], v2["version"]) == ("1", "2")
        assert v1["predictions"] != v2["predictions"]  # other weights: the routes reach other models
        assert c.get("/v1/models/tiny/versions/2").json()["version"] == "2"
        assert c.get("/v2/models/tiny").json()["versions"] == ["1", "2"]

        # Switch: behind the key; the unversioned routes (v1 and V2) answer with version 2.
        assert_error(c.post("/v1/models/tiny/default", json={"version": "2"}), 401)
        assert_error(c.post("/v1/models/tiny/default", json={"version": "7"}, headers=AUTH), 404,
                     "version_not_found")
        info = c.post("/v1/models/tiny/default", json={"version": "2"}, headers=AUTH).json()
        assert (info["default"], info["previous"]) == ("2", "1")
        assert _predict(c, jpg).json() == v2
        image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(jpg).decode()]}
        infer = c.post("/v2/models/tiny/infer", json={"inputs": [image]})
        assert infer.json()["model_version"] == "2" and infer.headers["X-Model-Version"] == "2"
        assert ModelStore(model_dir / "tiny").read_state().default == "2"  # written to the store
        # The default and the rollback target cannot be unloaded.
        assert_error(c.post("/v2/repository/models/tiny/unload?version=2", headers=AUTH), 409, "version_in_use")
        assert_error(c.post("/v2/repository/models/tiny/unload?version=1", headers=AUTH), 409, "version_in_use")

        info = c.post("/v1/models/tiny/rollback", headers=AUTH).json()
        assert info["default"] == "1"
        assert _predict(c, jpg).json() == v1
        assert_error(c.post("/v1/models/tiny/rollback", headers=AUTH), 409, "no_previous_version")

        metrics = c.get("/metrics").text
        assert 'imgclf_version_images_total{model="tiny",version="2"}' in metrics
        assert 'imgclf_version_images_total{model="tiny",version="1"}' in metrics


def test_plain_package_cannot_switch_versions(serve_model_dir, tmp_path):
    shutil.copytree(serve_model_dir / "tiny", tmp_path / "tiny")
    with _client(tmp_path) as c:
        wait_ready(c)
        assert _predict(c, jpeg_bytes(np.zeros((40, 40, 3), "uint8"))).headers["X-Model-Version"] == "1"
        assert_error(c.post("/v1/models/tiny/default", json={"version": "1"}, headers=AUTH), 409, "not_versioned")


def test_no_request_fails_during_a_switch(model_dir, jpg):
    """Requests run without pause while the default switches: none fails, and each client sees
    version 1 until the switch and version 2 after it."""
    with _client(model_dir) as c:
        wait_ready(c)
        seen: list[list[str]] = [[] for _ in range(3)]
        failures: list[str] = []
        stop = threading.Event()

        def worker(out: list[str]) -> None:
            while not stop.is_set():
                r = _predict(c, jpg)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    out.append(r.json()["version"])

        threads = [threading.Thread(target=worker, args=(s,)) for s in seen]
        for t in threads:
            t.start()
        try:
            _wait(lambda: all(len(s) >= 3 for s in seen))
            assert c.post("/v1/models/tiny/default", json={"version": "2"}, headers=AUTH).status_code == 200
            _wait(lambda: all(s.count("2") >= 3 for s in seen))
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        for s in seen:
            switched = s.index("2")
            assert set(s[:switched]) == {"1"} and set(s[switched:]) == {"2"}, s


def _wait(cond, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_servers_on_one_store_follow_each_other(model_dir, jpg):
    """Two servers on one model directory: a change made through one is served by both."""
    with _client(model_dir, poll_s=0.1) as a, _client(model_dir, poll_s=0.1) as b:
        wait_ready(a)
        wait_ready(b)
        assert _predict(b, jpg).json()["version"] == "1"
        a.post("/v1/models/tiny/default", json={"version": "2"}, headers=AUTH).raise_for_status()
        _wait(lambda: _predict(b, jpg).json()["version"] == "2")
        assert b.get("/v1/models/tiny/versions").json()["loaded"] == ["1", "2"]
        # A model loaded through A's management API is served by B too; unloaded, by neither.
        assert_error(_predict(b, jpg, "/v1/models/other/predict"), 404)
        a.post("/v2/repository/models/other/load", headers=AUTH).raise_for_status()
        _wait(lambda: _predict(b, jpg, "/v1/models/other/predict").status_code == 200)
        a.post("/v2/repository/models/other/unload", headers=AUTH).raise_for_status()
        _wait(lambda: _predict(b, jpg, "/v1/models/other/predict").status_code == 404)
        # A rollback made through B reaches A.
        b.post("/v1/models/tiny/rollback", headers=AUTH).raise_for_status()
        _wait(lambda: _predict(a, jpg).json()["version"] == "1")


def test_a_broken_new_version_is_refused_before_the_store_changes(model_dir, jpg):
    (model_dir / "tiny" / "3").mkdir()
    (model_dir / "tiny" / "3" / "model.json").write_text("{ broken")
    (model_dir / "tiny" / "3" / "model.onnx").write_bytes(b"")
    with _client(model_dir) as c:
        wait_ready(c)
        assert_error(c.post("/v1/models/tiny/default", json={"version": "3"}, headers=AUTH), 422, "invalid_package")
        assert ModelStore(model_dir / "tiny").read_state().default == "1"
        assert _predict(c, jpg).json()["version"] == "1"


def test_a_broken_versions_file_is_no_500_on_the_open_versions_route(model_dir):
    with _client(model_dir) as c:
        wait_ready(c)
        (model_dir / "tiny" / "versions.json").write_text("{not json")
        r = c.get("/v1/models/tiny/versions")
        assert r.status_code == 200, r.text
        assert r.json() == {"name": "tiny", "default": "1", "previous": None, "loaded": ["1"], "available": ["1"]}


@pytest.mark.slow
def test_two_serve_processes_on_one_store(model_dir, jpg):
    """Two ``imgclf serve`` processes on one model directory: requests to B run without pause while
    the default is switched through A; none fails, and B answers version 1, then version 2."""
    args = ("--model-dir", str(model_dir), "--api-key", KEY, "--store-poll-s", "0.2", "--max-batch-size", "4")
    with live_server(*args) as a, live_server(*args) as b, httpx.Client(base_url=b.url, timeout=30) as cb:
        seen: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                r = _predict(cb, jpg)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen.append(r.headers["X-Model-Version"])

        t = threading.Thread(target=worker)
        t.start()
        try:
            _wait(lambda: len(seen) >= 3)
            r = httpx.post(a.url + "/v1/models/tiny/default", json={"version": "2"}, headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
            _wait(lambda: seen.count("2") >= 3)
        finally:
            stop.set()
            t.join()
        assert failures == []
        switched = seen.index("2")
        assert set(seen[:switched]) == {"1"} and set(seen[switched:]) == {"2"}
        assert httpx.get(b.url + "/v1/models/tiny/versions").json()["default"] == "2"
