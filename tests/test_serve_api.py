"""The v1 REST API and the Flask-compatible /predict on a tiny model: request forms, responses and
every kind of bad input, each answered with the right status and the JSON error body."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import TINY_LABELS, assert_error, encode, image_variants, jpeg_bytes, wait_ready

from imgclf.server import ServerConfig, create_app


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return data.chelsea()


@pytest.fixture(scope="module")
def jpg(photo) -> bytes:
    return jpeg_bytes(photo)


@pytest.fixture(scope="module")
def client(serve_model_dir):
    config = ServerConfig(models=(str(serve_model_dir / "tiny"), str(serve_model_dir / "tiny2")),
                          model_dir=str(serve_model_dir), max_body_bytes=2 * 1024 * 1024,
                          max_images_per_request=8)
    with TestClient(create_app(config)) as c:
        wait_ready(c)
        yield c


def check_predictions(body: dict, n_images: int, k: int, labels: list[str]) -> None:
    assert set(body) == {"model", "version", "predictions"}
    assert len(body["predictions"]) == n_images
    for row in body["predictions"]:
        assert len(row) == k
        scores = [p["score"] for p in row]
        assert scores == sorted(scores, reverse=True)
        for p in row:
            assert set(p) == {"index", "label", "score"} and p["label"] == labels[p["index"]]
            assert 0.0 <= p["score"] <= 1.0


# -- request forms -------------------------------------------------------------------------


def test_multipart_one_and_several_files(client, jpg, photo):
    r = client.post("/v1/models/tiny/predict", files={"file": ("cat.jpg", jpg, "image/jpeg")})
    assert r.status_code == 200, r.text
    one = r.json()
    assert one["model"] == "tiny" and one["version"] == "1"
    check_predictions(one, 1, 3, TINY_LABELS)

    other = jpeg_bytes(np.ascontiguousarray(photo[::-1]))  # upside down: a different input
    r = client.post("/v1/models/tiny/predict?top_k=2",
                    files=[("file", ("a.jpg", jpg, "image/jpeg")), ("file", ("b.jpg", other, "image/jpeg")),
                           ("file", ("c.jpg", jpg, "image/jpeg"))])
    assert r.status_code == 200, r.text
    several = r.json()
    check_predictions(several, 3, 2, TINY_LABELS)
    # Each caller gets its own rows back, in request order.
    assert several["predictions"][0] == several["predictions"][2] == one["predictions"][0][:2]
    assert several["predictions"][1] != several["predictions"][0]


def test_raw_body_and_json_base64_agree_with_multipart(client, jpg):
    multipart = client.post("/v1/models/tiny/predict", files={"file": ("x.jpg", jpg, "image/jpeg")}).json()
    raw = client.post("/v1/models/tiny/predict", content=jpg, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json() == multipart
    octet = client.post("/v1/models/tiny/predict", content=jpg,
                        headers={"Content-Type": "application/octet-stream"})
    assert octet.status_code == 200 and octet.json() == multipart
    b64 = base64.b64encode(jpg).decode()
    js = client.post("/v1/models/tiny/predict", json={"instances": [{"b64": b64}, {"b64": b64}]})
    assert js.status_code == 200, js.text
    assert js.json()["predictions"] == multipart["predictions"] * 2


def test_top_k_bounds(client, jpg):
    r = client.post("/v1/models/tiny/predict?top_k=1000", content=jpg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and len(r.json()["predictions"][0]) == 3  # clamped to the classes
    assert_error(client.post("/v1/models/tiny/predict?top_k=0", content=jpg,
                             headers={"Content-Type": "image/jpeg"}), 400, "bad_request")
    assert_error(client.post("/v1/models/tiny/predict?top_k=abc", content=jpg,
                             headers={"Content-Type": "image/jpeg"}), 400, "bad_request")


def test_flask_compatible_predict_uses_default_model(client, jpg):
    # The original Flask services took request.files["file"] on POST /predict.
    r = client.post("/predict", files={"file": ("cat.jpg", jpg, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny"
    check_predictions(body, 1, 3, TINY_LABELS)
    assert "total;dur=" in r.headers["Server-Timing"]


def test_second_model_has_its_own_labels(client, jpg):
    r = client.post("/v1/models/tiny2/predict", files={"file": ("cat.jpg", jpg, "image/jpeg")})
    assert r.status_code == 200
    check_predictions(r.json(), 1, 4, ["x", "y", "z", "w"])


def test_every_image_mode_is_accepted(client, photo):
    for name, (data, ctype) in image_variants(photo).items():
        r = client.post("/v1/models/tiny/predict", content=data, headers={"Content-Type": ctype})
        assert r.status_code == 200, (name, r.text)


# -- model information ---------------------------------------------------------------------


def test_model_list_and_details(client, serve_model_dir):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["default"] == "tiny"
    assert [m["name"] for m in body["models"]] == ["tiny", "tiny2"]
    info = client.get("/v1/models/tiny").json()
    assert info["labels"] == TINY_LABELS and info["num_classes"] == 3 and info["ready"] is True
    assert info["preprocess"]["input_size"] == 32 and info["preprocess"]["crop_pct"] == 0.875
    assert info["provenance"]["architecture"] == "tiny-test-net"
    assert len(info["provenance"]["onnx_sha256"]) == 64
    assert info["batching"] == {"max_batch_size": 16, "max_delay_ms": 5.0, "queue_size": 128, "timeout_s": 30.0}
    assert info["output_kind"] == "logits"


# -- bad input -----------------------------------------------------------------------------


def test_unknown_model_and_route_are_404(client, jpg):
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert_error(client.post("/v1/models/nope/predict", content=jpg, headers={"Content-Type": "image/jpeg"}),
                 404, "model_not_found")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.get("/v1/models/tiny/predict"), 405)


def test_malformed_requests_are_400(client, jpg):
    cases = [
        dict(content=b"{not json", headers={"Content-Type": "application/json"}),
        dict(json={"instances": []}),
        dict(json={"inputs": [1, 2]}),
        dict(json={"instances": [{"b64": "@@not base64@@"}]}),
        dict(json={"instances": ["abc"]}),
        dict(content=b"", headers={"Content-Type": "image/jpeg"}),
        dict(files={"image": ("x.jpg", jpg, "image/jpeg")}),  # wrong field name
        dict(data={"file": "just text"}, files={"other": ("x.jpg", jpg, "image/jpeg")}),
        dict(content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}),  # no boundary
    ]
    for kw in cases:
        assert_error(client.post("/v1/models/tiny/predict", **kw), 400)


def test_not_an_image_is_415(client):
    assert_error(client.post("/v1/models/tiny/predict", content=b"hello, world",
                             headers={"Content-Type": "image/jpeg"}), 415, "unsupported_format")
    assert_error(client.post("/v1/models/tiny/predict", files={"file": ("notes.txt", b"plain text", "text/plain")}),
                 415, "unsupported_format")
    # A Content-Type the server does not read.
    assert_error(client.post("/v1/models/tiny/predict", content=b"abc", headers={"Content-Type": "text/plain"}),
                 415, "unsupported_media_type")
    # A real image in a format we refuse (EPS/PSD-like decoders are not used): ICO.
    ico = encode(Image.new("RGB", (16, 16), "red"), "ICO")
    assert_error(client.post("/v1/models/tiny/predict", content=ico, headers={"Content-Type": "image/x-icon"}),
                 415, "unsupported_format")


def test_truncated_and_empty_images_are_422(client, jpg, photo):
    assert_error(client.post("/v1/models/tiny/predict", content=jpg[: len(jpg) // 2],
                             headers={"Content-Type": "image/jpeg"}), 422, "corrupt_image")
    png = encode(Image.fromarray(photo), "PNG")
    assert_error(client.post("/v1/models/tiny/predict", content=png[:4000],
                             headers={"Content-Type": "image/png"}), 422)
    assert_error(client.post("/v1/models/tiny/predict", files={"file": ("empty.jpg", b"", "image/jpeg")}),
                 422, "empty_image")


def test_decompression_bomb_is_422(client):
    # 8000 x 6000 pixels (48 MP, over the 40 MP limit) that compress to a few tens of KB.
    bomb = encode(Image.new("L", (8000, 6000)), "PNG", optimize=True)
    assert len(bomb) < 1024 * 1024
    err = assert_error(client.post("/v1/models/tiny/predict", content=bomb, headers={"Content-Type": "image/png"}),
                       422, "image_too_large")
    assert "decompression bomb" in err["message"]


def test_one_bad_file_among_several_names_it(client, jpg):
    r = client.post("/v1/models/tiny/predict",
                    files=[("file", ("good.jpg", jpg, "image/jpeg")), ("file", ("bad.jpg", b"junk", "image/jpeg"))])
    err = assert_error(r, 415)
    assert err["message"].startswith("bad.jpg: ")


def test_body_over_the_limit_is_413(client):
    big = b"\xff" * (2 * 1024 * 1024 + 1)
    assert_error(client.post("/v1/models/tiny/predict", content=big, headers={"Content-Type": "image/jpeg"}),
                 413, "payload_too_large")

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(40):
            yield b"\0" * (64 * 1024)

    assert_error(client.post("/v1/models/tiny/predict", content=chunks(), headers={"Content-Type": "image/jpeg"}),
                 413, "payload_too_large")


def test_too_many_images_is_413(client, jpg):
    b64 = base64.b64encode(jpg).decode()
    assert_error(client.post("/v1/models/tiny/predict", json={"instances": [{"b64": b64}] * 9}),
                 413, "too_many_images")


def test_errors_are_counted_in_metrics(client):
    client.post("/v1/models/tiny/predict", content=b"junk", headers={"Content-Type": "image/jpeg"})
    text = client.get("/metrics").text
    assert ('imgclf_errors_total{code="unsupported_format",endpoint="/v1/models/{name}/predict",'
            'model="tiny",status="415"}') in text
    assert 'imgclf_requests_total{endpoint="/v1/models/{name}/predict",model="tiny",status="200"}' in text
    for name in ("imgclf_request_latency_seconds_bucket", "imgclf_queue_time_seconds_bucket",
                 "imgclf_batch_size_bucket", "imgclf_images_total", "imgclf_images_per_second",
                 "imgclf_queue_depth", "imgclf_models_loaded 2.0"):
        assert name in text, name


def test_web_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    for path in ("/static/app.js", "/static/style.css", "/favicon.ico"):
        assert client.get(path).status_code == 200, path
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    doc = client.get("/openapi.json").json()
    for path in ("/v1/models/{name}/predict", "/predict", "/v2/models/{name}/infer", "/v2/repository/index",
                 "/metrics"):
        assert path in doc["paths"], path
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/*", "application/json"}


def test_bytes_io_helper_sanity(photo):
    # The helper's variants really are the modes they claim (so the mode test above means something).
    modes = {name: Image.open(io.BytesIO(data)).mode for name, (data, _) in image_variants(photo).items()}
    assert modes["grayscale_jpeg"] == "L" and modes["rgba_png"] == "RGBA" and modes["palette_png"] == "P"
    assert modes["cmyk_jpeg"] == "CMYK" and modes["grey16_png"].startswith("I")
