"""The real default model behind the server: real photos in every mode classify correctly, an
EXIF-rotated phone photo classifies like the upright one, and the server's logits equal
in-process evaluation's for the same bytes (no train/serve skew)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_support import CAT, encode, exif_rotated_jpeg, image_variants, jpeg_bytes, wait_ready

from imgclf.engine import OnnxEngine, softmax
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.server import ServerConfig, create_app

pytestmark = pytest.mark.slow

COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


@pytest.fixture(scope="module")
def client(lite0_package):
    with TestClient(create_app(ServerConfig(models=(str(lite0_package),)))) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def engine(lite0_package):
    return OnnxEngine(load_package(lite0_package))


def server_logits(client, images: list[bytes]) -> np.ndarray:
    body = {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [base64.b64encode(b).decode() for b in images]}]}
    r = client.post("/v2/models/efficientnet_lite0/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def top1(client, data: bytes, ctype: str = "image/jpeg") -> int:
    r = client.post("/predict?top_k=1", content=data, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0][0]["index"]


def test_real_photos_classify_correctly(client, photos):
    assert top1(client, jpeg_bytes(photos["chelsea"])) in CAT
    assert top1(client, jpeg_bytes(photos["coffee"])) in COFFEE
    r = client.post("/v1/models/efficientnet_lite0/predict",
                    files=[("file", ("cat.jpg", jpeg_bytes(photos["chelsea"]), "image/jpeg")),
                           ("file", ("cup.jpg", jpeg_bytes(photos["coffee"]), "image/jpeg"))])
    cat, cup = r.json()["predictions"]
    assert cat[0]["index"] in CAT and cup[0]["index"] in COFFEE
    assert len(cat) == 5 and cat[0]["label"]


@pytest.mark.parametrize("mode", ["grayscale_jpeg", "rgba_png", "palette_png", "palette_gif", "cmyk_jpeg",
                                  "grey16_png", "webp", "bmp", "tiff"])
def test_every_image_mode_classifies_correctly(client, photos, mode):
    data, ctype = image_variants(photos["chelsea"])[mode]
    assert top1(client, data, ctype) in CAT
    data, ctype = image_variants(photos["coffee"])[mode]
    assert top1(client, data, ctype) in COFFEE


def test_exif_rotated_phone_photo_classifies_like_the_upright_one(client, photos):
    for name in ("chelsea", "coffee"):
        upright, rotated = exif_rotated_jpeg(photos[name])
        # The same stored pixels without the tag: what a decoder ignoring EXIF would see.
        untagged = encode(Image.open(io.BytesIO(rotated)), "JPEG", quality=95, subsampling=0)
        probs = softmax(server_logits(client, [upright, rotated, untagged]))
        assert probs[0].argmax() == probs[1].argmax()
        assert np.abs(probs[0] - probs[1]).max() < 0.05
        # Control: without the tag the model sees a sideways picture and answers differently.
        assert np.abs(probs[0] - probs[2]).max() > 0.1


def test_server_logits_equal_in_process_evaluation(client, engine, sample_jpegs):
    files = [sample_jpegs[n].read_bytes() for n in ("chelsea", "coffee", "rocket", "china", "flower")]
    expected = engine.logits(np.stack([prepare(b, engine.spec) for b in files]))
    np.testing.assert_allclose(server_logits(client, files), expected, atol=1e-5, rtol=0)
    for b, row in zip(files, expected, strict=True):  # one at a time too (batch of one)
        np.testing.assert_allclose(server_logits(client, [b])[0], row, atol=1e-5, rtol=0)
    # And the v1 scores are the softmax of those logits.
    r = client.post("/v1/models/efficientnet_lite0/predict?top_k=3", content=files[0],
                    headers={"Content-Type": "image/jpeg"})
    probs = softmax(expected[:1])[0]
    for p in r.json()["predictions"][0]:
        assert abs(p["score"] - probs[p["index"]]) < 1e-5
