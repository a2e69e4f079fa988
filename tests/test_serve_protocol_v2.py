"""Open Inference Protocol (KServe V2) REST: health, metadata, inference in JSON and with the
binary tensor extension, the classification extension, versions and bad requests."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_support import assert_error, jpeg_bytes, wait_ready

from imgclf.engine import OnnxEngine, softmax
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.server import ServerConfig, create_app


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return [jpeg_bytes(data.chelsea()), jpeg_bytes(data.coffee())]


@pytest.fixture(scope="module")
def client(serve_model_dir):
    with TestClient(create_app(ServerConfig(models=(str(serve_model_dir / "tiny"),)))) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def reference(serve_model_dir, photos):
    """In-process logits for the photos: the one decode path, the package's spec, ONNX Runtime."""
    engine = OnnxEngine(load_package(serve_model_dir / "tiny"))
    return engine.logits(np.stack([prepare(p, engine.spec) for p in photos]))


def infer_body(photos, **extra):
    return {"inputs": [{"name": "image", "shape": [len(photos)], "datatype": "BYTES",
                        "data": [base64.b64encode(p).decode() for p in photos]}], **extra}


def test_server_health_and_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "imgclf" and "classification" in meta["extensions"]
    assert "binary_tensor_data" in meta["extensions"] and "model_repository" in meta["extensions"]


def test_model_metadata_and_readiness(client):
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get("/v2/models/tiny/versions/1").json() == meta
    assert client.get("/v2/models/tiny/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    assert_error(client.get("/v2/models/tiny/versions/7"), 404, "model_not_found")
    assert_error(client.get("/v2/models/nope"), 404, "model_not_found")
    assert_error(client.get("/v2/models/nope/ready"), 404)


def test_infer_returns_the_full_output_tensor(client, photos, reference):
    r = client.post("/v2/models/tiny/infer", json=infer_body(photos, id="req-7"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "1" and body["id"] == "req-7"
    (out,) = body["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [2, 3]
    got = np.asarray(out["data"], np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)


def test_classification_extension(client, photos, reference):
    for body in (infer_body(photos, parameters={"classification": 2}),
                 infer_body(photos, outputs=[{"name": "logits", "parameters": {"classification": 2}}])):
        r = client.post("/v2/models/tiny/infer", json=body)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
        probs = softmax(reference)
        for i in range(2):
            best = np.argsort(-probs[i])[:2]
            rows = out["data"][2 * i: 2 * i + 2]
            for entry, idx in zip(rows, best, strict=True):
                score, index, label = entry.split(":", 2)
                assert int(index) == idx and label == "abc"[idx]
                assert abs(float(score) - probs[i, idx]) < 1e-5


def _binary_request(photos, *, binary_output: bool) -> tuple[bytes, dict[str, str]]:
    blob = b"".join(struct.pack("<I", len(p)) + p for p in photos)
    head = {"inputs": [{"name": "image", "shape": [len(photos), 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(blob)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": binary_output}}]}
    raw = json.dumps(head).encode()
    return raw + blob, {"Inference-Header-Content-Length": str(len(raw)),
                        "Content-Type": "application/octet-stream"}


def test_binary_tensor_extension_in_and_out(client, photos, reference):
    body, headers = _binary_request(photos, binary_output=True)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    head = json.loads(r.content[:n])
    (out,) = head["outputs"]
    assert "data" not in out and out["parameters"]["binary_data_size"] == 2 * 3 * 4
    got = np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)

    body, headers = _binary_request(photos, binary_output=False)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200 and "Inference-Header-Content-Length" not in r.headers
    np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(2, 3), reference, atol=1e-5)


def test_versioned_infer(client, photos):
    assert client.post("/v2/models/tiny/versions/1/infer", json=infer_body(photos)).status_code == 200
    assert_error(client.post("/v2/models/tiny/versions/2/infer", json=infer_body(photos)), 404)


def test_bad_inference_requests_are_400(client, photos):
    good = infer_body(photos[:1])
    inp = good["inputs"][0]
    bad = [
        {"inputs": []},
        {"inputs": [dict(inp, name="pixels")]},
        {"inputs": [dict(inp, datatype="FP32")]},
        {"inputs": [dict(inp, shape=[2])]},  # says two images, holds one
        {"inputs": [dict(inp, shape=[1, 3])]},
        {"inputs": [dict(inp, shape=[-1])]},
        {"inputs": [dict(inp, data=["%%%"])]},
        {"inputs": [dict(inp, data=[1.5])]},
        {"inputs": [dict(inp, data=None)]},
        {"inputs": [inp, inp]},
        dict(good, outputs=[{"name": "probs"}]),
        dict(good, parameters={"classification": -1}),
        dict(good, parameters={"classification": "three"}),
        dict(good, unexpected=True),
        {"inputs": "image"},
    ]
    for body in bad:
        assert_error(client.post("/v2/models/tiny/infer", json=body), 400)
    assert_error(client.post("/v2/models/tiny/infer", content=b"not json",
                             headers={"Content-Type": "application/json"}), 400)
    assert_error(client.post("/v2/models/tiny/infer", content=b'{"inputs": []}',
                             headers={"Inference-Header-Content-Length": "9999"}), 400)
    body, headers = _binary_request(photos[:1], binary_output=False)
    assert_error(client.post("/v2/models/tiny/infer", content=body[:-10], headers=headers), 400)


def test_undecodable_image_in_v2_is_415_or_422(client, photos):
    junk = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(b"not an image").decode()]}]}
    assert_error(client.post("/v2/models/tiny/infer", json=junk), 415, "unsupported_format")
    cut = infer_body([photos[0][:3000]])
    assert_error(client.post("/v2/models/tiny/infer", json=cut), 422, "corrupt_image")
