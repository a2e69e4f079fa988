"""Feedback over HTTP, in process: the open POST (multipart, JSON, prediction ids), its checks and
limits (4xx JSON errors, 429 per client, 507 quota), keyed review, 503 on a full disk or an
unreachable database with what was stored intact, metrics and the OpenAPI document."""

from __future__ import annotations

import base64
import errno
import hashlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import assert_error, jpeg_bytes

pytest.importorskip("sqlalchemy")

from imgclf.feedback import blobs as blobs_mod  # noqa: E402
from imgclf.server import ServerConfig, create_app  # noqa: E402
from imgclf.server.config import FeedbackSettings  # noqa: E402

KEY = "review-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def image(seed: int) -> bytes:
    return jpeg_bytes(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def make_client(serve_model_dir, tmp_path, **settings) -> TestClient:
    fb = FeedbackSettings(**{"store_dir": str(tmp_path / "store"), **settings})
    config = ServerConfig(models=(str(serve_model_dir / "tiny"),), api_key=KEY, load_in_background=False,
                          feedback=fb)
    return TestClient(create_app(config))


@pytest.fixture()
def client(serve_model_dir, tmp_path):
    with make_client(serve_model_dir, tmp_path) as c:
        yield c


def send(c: TestClient, seed: int, label: str = "b", **fields):
    return c.post("/v1/models/tiny/feedback", files={"file": ("x.jpg", image(seed), "image/jpeg")},
                  data={"label": label, **{k: str(v) for k, v in fields.items()}})


def test_correction_by_file_json_and_prediction_id(client):
    r = send(client, 1, label="b", predicted_label="a", predicted_score=0.6, submitted_by="ann")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["model"], body["version"], body["label"], body["status"]) == ("tiny", "1", "b", "pending")
    assert (body["predicted_label"], body["predicted_score"], body["submitted_by"]) == ("a", 0.6, "ann")
    assert body["sha256"] == hashlib.sha256(image(1)).hexdigest() and r.headers["location"] == f"/v1/feedback/{body['id']}"
    assert send(client, 1, label="b", predicted_label="a", predicted_score=0.6, submitted_by="ann").status_code == 200

    r = client.post("/v1/models/tiny/feedback", json={"label": "c", "b64": base64.b64encode(image(2)).decode()})
    assert r.status_code == 201, r.text

    p = client.post("/v1/models/tiny/predict", files={"file": ("y.jpg", image(3), "image/jpeg")}).json()
    [pid] = p["prediction_ids"]
    assert pid == hashlib.sha256(image(3)).hexdigest()
    r = client.post("/v1/models/tiny/feedback", json={"label": "a", "prediction_id": pid, "version": "1"})
    assert r.status_code == 201 and r.json()["sha256"] == pid

    listed = client.get("/v1/feedback?status=pending", headers=AUTH).json()
    assert listed["total"] == 3 and [x["label"] for x in listed["records"]] == ["b", "c", "a"]


def test_bad_corrections_are_4xx_json(client):
    assert_error(send(client, 1, label="no-such-label"), 422, "unknown_label")
    assert_error(send(client, 1, predicted_label="zzz"), 422, "unknown_label")
    assert_error(send(client, 1, version="7"), 404, "version_not_found")
    r = client.post("/v1/models/nope/feedback", json={"label": "a", "prediction_id": "0" * 64})
    assert_error(r, 404, "model_not_found")
    r = client.post("/v1/models/tiny/feedback", files={"file": ("x.jpg", b"not an image", "image/jpeg")},
                    data={"label": "a"})
    assert_error(r, 415, "unsupported_format")
    assert_error(client.post("/v1/models/tiny/feedback", json={"label": "a"}), 400)
    assert_error(client.post("/v1/models/tiny/feedback", json={"label": "a", "prediction_id": "../etc"}), 400)
    assert_error(client.post("/v1/models/tiny/feedback", json={"label": "a", "prediction_id": "f" * 64}),
                 404, "prediction_not_found")
    assert_error(client.post("/v1/models/tiny/feedback", json=["a"]), 400)
    assert_error(client.post("/v1/models/tiny/feedback", json={"label": "a", "extra": 1, "b64": "AAAA"}), 400)
    assert_error(client.post("/v1/models/tiny/feedback", content=b"x", headers={"content-type": "text/plain"}), 415)
    assert_error(send(client, 1, predicted_score="high"), 400)
    assert client.get("/v1/feedback", headers=AUTH).json()["total"] == 0


def test_review_needs_the_key(client):
    rid = send(client, 1).json()["id"]
    for method, path in [("GET", "/v1/feedback"), ("GET", f"/v1/feedback/{rid}"), ("GET", f"/v1/feedback/{rid}/image"),
                         ("POST", f"/v1/feedback/{rid}/accept"), ("POST", f"/v1/feedback/{rid}/reject"),
                         ("DELETE", f"/v1/feedback/{rid}")]:
        assert_error(client.request(method, path), 401, "unauthorized")
        assert_error(client.request(method, path, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    img = client.get(f"/v1/feedback/{rid}/image", headers=AUTH)
    assert img.status_code == 200 and img.content == image(1) and img.headers["content-type"] == "image/jpeg"
    assert client.post(f"/v1/feedback/{rid}/reject", headers=AUTH).json()["status"] == "rejected"
    rec = client.post(f"/v1/feedback/{rid}/accept", headers=AUTH).json()
    assert rec["status"] == "accepted" and rec["reviewed_by"].startswith("api:")
    assert client.delete(f"/v1/feedback/{rid}", headers=AUTH).status_code == 204
    assert_error(client.get(f"/v1/feedback/{rid}", headers=AUTH), 404, "feedback_not_found")


def test_review_is_off_without_a_key(serve_model_dir, tmp_path):
    config = ServerConfig(models=(str(serve_model_dir / "tiny"),), load_in_background=False,
                          feedback=FeedbackSettings(store_dir=str(tmp_path)))
    with TestClient(create_app(config)) as c:
        assert send(c, 1).status_code == 201  # the open page still takes corrections
        assert_error(c.get("/v1/feedback"), 403, "management_disabled")


def test_feedback_off_answers_404_and_is_not_documented(serve_model_dir):
    config = ServerConfig(models=(str(serve_model_dir / "tiny"),), load_in_background=False)
    with TestClient(create_app(config)) as c:
        assert "--feedback" in assert_error(send(c, 1), 404, "feedback_disabled")["message"]
        assert_error(c.get("/v1/feedback/3/image", headers=AUTH), 404, "feedback_disabled")
        assert not [p for p in c.get("/openapi.json").json()["paths"] if p != "/v1/feedback/settings" and "feedback" in p]
        assert c.get("/v1/feedback/settings").json() == {"enabled": False, "keeps_uploads": False}
        p = c.post("/v1/models/tiny/predict", files={"file": ("y.jpg", image(3), "image/jpeg")}).json()
        assert "prediction_ids" not in p


def test_rate_limit_per_client(serve_model_dir, tmp_path):
    with make_client(serve_model_dir, tmp_path, rate_per_minute=1, burst=2) as c:
        assert send(c, 1).status_code == 201 and send(c, 2).status_code == 201
        r = send(c, 3)
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1


def test_quota_answers_507(serve_model_dir, tmp_path):
    with make_client(serve_model_dir, tmp_path, max_records=2) as c:
        assert send(c, 1).status_code == 201 and send(c, 2).status_code == 201
        assert_error(send(c, 3), 507, "feedback_quota_exceeded")
        assert c.get("/v1/feedback", headers=AUTH).json()["total"] == 2


def test_full_disk_is_503_and_keeps_what_was_stored(client, monkeypatch):
    first = send(client, 1).json()

    def enospc(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs_mod.os, "write", enospc)
    r = send(client, 2)
    assert_error(r, 503, "storage_full")
    assert "retry-after" in r.headers
    monkeypatch.undo()
    listed = client.get("/v1/feedback", headers=AUTH).json()
    assert [x["id"] for x in listed["records"]] == [first["id"]]
    assert client.get(f"/v1/feedback/{first['id']}/image", headers=AUTH).content == image(1)
    assert send(client, 2).status_code == 201  # room again: it works again


def test_database_failure_is_503_and_keeps_what_was_stored(client, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from imgclf.feedback.store import FeedbackStore

    first = send(client, 1).json()
    real = FeedbackStore._check_quota

    def down(self, s, new_bytes):
        raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(FeedbackStore, "_check_quota", down)
    assert_error(send(client, 2), 503, "feedback_unavailable")
    monkeypatch.setattr(FeedbackStore, "_check_quota", real)
    assert [x["id"] for x in client.get("/v1/feedback", headers=AUTH).json()["records"]] == [first["id"]]


def test_unreachable_database_at_start_still_serves_predictions(serve_model_dir, tmp_path):
    dead = "postgresql+psycopg://nobody@127.0.0.1:1/imgclf"
    pytest.importorskip("psycopg")
    with make_client(serve_model_dir, tmp_path, db_url=dead) as c:
        r = send(c, 1)
        assert_error(r, 503, "feedback_unavailable")
        assert "127.0.0.1:1" in r.json()["error"]["message"] and "nobody@" in r.json()["error"]["message"]
        p = c.post("/v1/models/tiny/predict", files={"file": ("y.jpg", image(3), "image/jpeg")})
        assert p.status_code == 200
        assert c.get("/metrics").status_code == 200


def test_metrics_count_feedback_by_model_version_status(client):
    rid = send(client, 1, predicted_label="b").json()["id"]
    send(client, 2, predicted_label="a")
    client.post(f"/v1/feedback/{rid}/accept", headers=AUTH)
    client.app.state.imgclf.feedback._counts_at = -1e9  # the gauge is cached between scrapes
    text = client.get("/metrics").text
    assert 'imgclf_feedback_records{model="tiny",status="accepted",version="1"} 1.0' in text
    assert 'imgclf_feedback_records{model="tiny",status="pending",version="1"} 1.0' in text
    assert 'imgclf_feedback_received_total{model="tiny",verdict="right",version="1"} 1.0' in text
    assert 'imgclf_feedback_received_total{model="tiny",verdict="wrong",version="1"} 1.0' in text


def test_prediction_log(serve_model_dir, tmp_path, capsys):
    with make_client(serve_model_dir, tmp_path, log_predictions=True) as c:
        c.post("/v1/models/tiny/predict?top_k=2", files=[("file", ("a.jpg", image(1), "image/jpeg")),
                                                         ("file", ("b.jpg", image(2), "image/jpeg"))])
        store = c.app.state.imgclf.feedback.store()
        logged = store.predictions()
    assert len(logged) == 2
    assert {e["sha256"] for e in logged} == {hashlib.sha256(image(i)).hexdigest() for i in (1, 2)}
    assert all(e["model"] == "tiny" and e["version"] == "1" and len(e["top_k"]) == 2 for e in logged)
    from imgclf.cli import main

    assert main(["feedback", "predictions", "--store", str(tmp_path / "store"), "--model", "tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["sha256"] for line in lines] == [e["sha256"] for e in logged]
    assert main(["feedback", "predictions", "--store", str(tmp_path / "store"), "--model", "other"]) == 0
    assert capsys.readouterr().out == ""


def test_openapi_documents_feedback(client):
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/v1/models/{name}/feedback"]["post"]
    content = post["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert "label" in content["multipart/form-data"]["schema"]["required"]
    assert "FeedbackRequest" in doc["components"]["schemas"]
    assert {"201", "422", "429", "503", "507"} <= set(post["responses"])
    assert doc["paths"]["/v1/feedback"]["get"]["security"]


def test_serve_refuses_a_store_from_a_later_version(serve_model_dir, tmp_path, capsys):
    from sqlalchemy import text

    from imgclf.cli import main
    from imgclf.feedback import migrate
    from imgclf.feedback.engine import make_engine
    from imgclf.feedback.paths import sqlite_url
    from imgclf.feedback.store import FeedbackStore

    FeedbackStore.open(None, tmp_path).close()
    engine = make_engine(sqlite_url(tmp_path))
    with engine.begin() as c:
        c.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = 'f00d'"))
    engine.dispose()
    code = main(["serve", "--model", str(serve_model_dir / "tiny"), "--feedback-store", str(tmp_path), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "later imgclf" in err and err.count("\n") == 1


def test_upload_cache_counts_each_entry_so_tiny_images_stay_bounded():
    from imgclf.server.feedback import UploadCache

    cache = UploadCache(64 * 1024)
    for i in range(10_000):  # tiny uploads: their keys and nodes cost more than their bytes
        cache.put(f"{i:064x}", b"GIF89a")
    assert len(cache._items) <= 64 * 1024 // UploadCache.ENTRY_OVERHEAD
    assert cache.get(f"{9_999:064x}") == b"GIF89a" and cache.get(f"{0:064x}") is None
    cache.put(f"{9_999:064x}", b"GIF89a")  # the same id again replaces it: the count stays right
    assert cache._size == len(cache._items) * (UploadCache.ENTRY_OVERHEAD + 6)
