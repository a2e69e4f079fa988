"""Runtime model management (the V2 model repository extension) and the API key that guards it;
model names never reach the filesystem unchecked."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient
from serve_support import assert_error, jpeg_bytes, wait_ready

from imgclf.server import ServerConfig, create_app

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def repo(serve_model_dir, tmp_path_factory):
    """A model directory with two good packages, a broken one and a symlink that leads outside."""
    root = tmp_path_factory.mktemp("repo")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(serve_model_dir / "tiny", root / "tiny")
    shutil.copytree(serve_model_dir / "tiny2", root / "tiny2")
    shutil.copytree(serve_model_dir / "tiny", outside / "escaped")
    (root / "evil").symlink_to(outside / "escaped")
    (root / "broken").mkdir()
    (root / "broken" / "model.json").write_text("{ not json")
    (root / "broken" / "model.onnx").write_bytes(b"")
    return root


@pytest.fixture()
def client(repo):
    config = ServerConfig(models=(str(repo / "tiny"),), model_dir=str(repo), api_key=KEY)
    with TestClient(create_app(config)) as c:
        wait_ready(c)
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def jpg():
    from skimage import data

    return jpeg_bytes(data.chelsea())


def test_key_is_required_and_checked(client):
    err = assert_error(client.post("/v2/repository/index"), 401, "unauthorized")
    assert "X-API-Key" in err["message"]
    assert assert_error(client.post("/v2/repository/index", headers={"X-API-Key": "wrong"}), 401)
    assert_error(client.post("/v2/repository/index", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(client.post("/v2/repository/index", headers={"Authorization": f"Basic {KEY}"}), 401)
    assert client.post("/v2/repository/index", headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/v2/repository/index", headers=AUTH).status_code == 200
    # A wrong credential is refused even next to a right one.
    assert_error(client.post("/v2/repository/index", headers={**AUTH, "X-API-Key": "wrong"}), 401)
    assert client.post("/v2/repository/index", headers={**AUTH, "X-API-Key": KEY}).status_code == 200
    assert_error(client.post("/v2/repository/models/tiny2/load"), 401)
    assert_error(client.post("/v2/repository/models/tiny/unload"), 401)
    # Inference and health stay open.
    assert client.get("/v2/health/ready").status_code == 200


def test_index_lists_loaded_and_loadable(client):
    rows = client.post("/v2/repository/index", headers=AUTH).json()
    states = {r["name"]: r["state"] for r in rows}
    # "broken" looks like a package until loaded; "evil" leads outside the directory and is not listed.
    assert states == {"tiny": "READY", "tiny2": "UNAVAILABLE", "broken": "UNAVAILABLE"}
    ready_only = client.post("/v2/repository/index", headers=AUTH, json={"ready": True}).json()
    assert [r["name"] for r in ready_only] == ["tiny"]


def test_load_predict_unload(client, jpg):
    assert_error(client.post("/v1/models/tiny2/predict", content=jpg, headers={"Content-Type": "image/jpeg"}), 404)
    r = client.post("/v2/repository/models/tiny2/load", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "tiny2" and r.json()["labels"] == ["x", "y", "z", "w"]
    r = client.post("/v1/models/tiny2/predict", content=jpg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and len(r.json()["predictions"][0]) == 4
    assert client.get("/v2/models/tiny2/ready").json() == {"ready": True}

    r = client.post("/v2/repository/models/tiny2/unload", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "UNAVAILABLE"
    assert_error(client.post("/v1/models/tiny2/predict", content=jpg, headers={"Content-Type": "image/jpeg"}),
                 404, "model_not_found")
    assert_error(client.post("/v2/repository/models/tiny2/unload", headers=AUTH), 404)


def test_reload_keeps_serving(client, jpg):
    before = client.post("/predict", content=jpg, headers={"Content-Type": "image/jpeg"}).json()
    assert client.post("/v2/repository/models/tiny/load", headers=AUTH).status_code == 200
    after = client.post("/predict", content=jpg, headers={"Content-Type": "image/jpeg"}).json()
    assert after == before


def test_names_never_reach_the_filesystem_unchecked(client):
    for name in ("...", ".hidden", "a" * 65, "bad name", "x;rm", "a..b"):
        assert_error(client.post(f"/v2/repository/models/{name}/load", headers=AUTH), 400, "invalid_model_name")
    # Encoded slashes never match a route; a symlink that leads outside the directory is refused.
    r = client.post("/v2/repository/models/..%2F..%2Fetc/load", headers=AUTH)
    assert r.status_code in (400, 404)
    assert_error(client.post("/v2/repository/models/evil/load", headers=AUTH), 404, "model_not_found")
    assert_error(client.post("/v2/repository/models/missing/load", headers=AUTH), 404, "model_not_found")
    err = assert_error(client.post("/v2/repository/models/broken/load", headers=AUTH), 422, "invalid_package")
    assert "model.json" in err["message"]
    assert "evil" not in client.get("/v1/models").text
    rows = {r["name"]: r for r in client.post("/v2/repository/index", headers=AUTH).json()}
    assert "model.json" in rows["broken"]["reason"]


def test_dot_dot_is_refused_before_any_path_is_built(client):
    # HTTP clients normalise "/models/../load" away, so check the registry itself.
    from imgclf.server.errors import ApiError

    registry = client.app.state.imgclf.registry
    for name in ("..", "../tiny", "/etc", "tiny/../tiny2"):
        with pytest.raises(ApiError) as exc:
            registry.package_path(name)
        assert exc.value.status_code == 400


def test_readiness_follows_the_loaded_models(client):
    assert client.post("/v2/repository/models/tiny/unload", headers=AUTH).status_code == 200
    r = client.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}
    assert_error(client.post("/predict", content=b"x", headers={"Content-Type": "image/jpeg"}), 404, "no_model")
    assert client.post("/v2/repository/models/tiny/load", headers=AUTH).status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_without_a_key_management_is_off(repo, caplog, jpg):
    with caplog.at_level("WARNING", logger="imgclf.server"):
        with TestClient(create_app(ServerConfig(models=(str(repo / "tiny"),), model_dir=str(repo)))) as c:
            wait_ready(c)
            for path in ("/v2/repository/index", "/v2/repository/models/tiny/unload",
                         "/v2/repository/models/tiny2/load"):
                err = assert_error(c.post(path, headers=AUTH), 403, "management_disabled")
                assert "--api-key" in err["message"] and "IMGCLF_API_KEY" in err["message"]
            # Nothing was unloaded: the model still answers.
            r = c.post("/predict", content=jpg, headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200
    # The log says so at start.
    assert any("management API is off" in r.getMessage() and "--api-key" in r.getMessage() for r in caplog.records)


def test_ready_only_after_every_model_is_warmed_up(repo):
    import threading

    app = create_app(ServerConfig(models=(str(repo / "tiny"), str(repo / "tiny2")), max_batch_size=4))
    registry = app.state.imgclf.registry
    release = threading.Event()
    warmed: list[tuple[str, list[int]]] = []
    real_warm_up = registry._warm_up

    def gated_warm_up(engine):
        shapes: list[int] = []
        real_logits = engine.logits
        engine.logits = lambda x: shapes.append(len(x)) or real_logits(x)
        release.wait(20)
        real_warm_up(engine)
        engine.logits = real_logits
        warmed.append((engine.name, shapes))

    registry._warm_up = gated_warm_up
    with TestClient(app) as c:
        # Live at once, not ready while the warm-up runs; predictions are refused meanwhile.
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        r = c.post("/predict", content=b"x", headers={"Content-Type": "image/jpeg"})
        assert_error(r, 503, "not_ready")
        assert r.headers["Retry-After"] == "1"
        release.set()
        wait_ready(c)
        assert c.get("/v2/health/ready").json() == {"ready": True}
    assert warmed == [("tiny", [1, 4]), ("tiny2", [1, 4])]  # both models, at batch 1 and the max batch
