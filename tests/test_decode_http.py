"""What the decode path's errors and formats become over HTTP: HEIC/AVIF answered, hostile files
answered 415/422 with a JSON error (never a 500), and the regression files too."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import assert_error, wait_ready

from imgclf.engine import OnnxEngine
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.server import ServerConfig, create_app

REGRESSIONS = Path(__file__).parent / "data" / "regressions"


@pytest.fixture(scope="module")
def client(serve_model_dir):
    with TestClient(create_app(ServerConfig(models=(str(serve_model_dir / "tiny"),)))) as c:
        wait_ready(c)
        yield c


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def post(client, data: bytes, ctype: str = "application/octet-stream"):
    return client.post("/v1/models/tiny/predict", content=data, headers={"content-type": ctype})


@pytest.mark.parametrize("fmt, ctype", [("HEIF", "image/heic"), ("AVIF", "image/avif")])
def test_heic_and_avif_uploads_are_classified_like_in_process(client, serve_model_dir, fmt, ctype):
    from imgclf.samples import reference_photo

    data = encode(Image.fromarray(reference_photo()), fmt, quality=85)
    r = post(client, data, ctype)
    assert r.status_code == 200, r.text
    engine = OnnxEngine(load_package(serve_model_dir / "tiny"))
    expected = engine.probabilities(prepare(data, engine.spec)[None])[0]
    got = r.json()["predictions"][0][0]
    assert got["index"] == int(np.argmax(expected))
    assert abs(got["score"] - float(expected.max())) < 1e-4


@pytest.mark.parametrize("w, h", [(8192, 1), (1, 65535)])
def test_extreme_aspect_ratio_is_422_at_once(client, w, h):
    err = assert_error(post(client, encode(Image.new("L", (w, h)), "PNG"), "image/png"), 422, "image_too_large")
    assert "aspect ratio" in err["message"]


def test_every_regression_file_is_a_json_answer_not_a_500(client):
    files = sorted(REGRESSIONS.glob("*.bin"))
    assert files
    for f in files:
        r = post(client, f.read_bytes())
        assert r.status_code in (200, 415, 422), (f.name, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json"), f.name


def test_pdf_is_415_and_named(client):
    err = assert_error(post(client, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "image/jpeg"), 415, "unsupported_format")
    assert "PDF" in err["message"]
