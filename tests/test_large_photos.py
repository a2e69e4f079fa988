"""Phone-size photos are decoded at a reduced DCT scale; predictions must not move.

The real photos are upscaled to 12 MP and 24 MP JPEGs (what a phone sends) and classified by the
real EfficientNet-Lite0 package twice: through the one pipeline (scaled decode + box reduce) and
from a full-size decode. Top-1 must agree and the top-5 probabilities stay within 0.02.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf.engine import OnnxEngine
from imgclf.images import decode
from imgclf.package import load_package
from imgclf.pipeline import prepare
from imgclf.preprocess import preprocess
from imgclf.samples import sample_photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(lite0_package):
    return OnnxEngine(load_package(lite0_package))


def phone_jpeg(arr: np.ndarray, megapixels: float, exif: bytes | None = None) -> bytes:
    h, w = arr.shape[:2]
    scale = (megapixels * 1e6 / (w * h)) ** 0.5
    big = Image.fromarray(arr).resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def probs(engine: OnnxEngine, x: np.ndarray) -> np.ndarray:
    return engine.probabilities(x[None])[0]


@pytest.mark.parametrize("megapixels", [12, 24])
def test_scaled_decode_keeps_predictions_of_a_full_decode(engine, megapixels):
    spec = engine.spec
    for name, arr in sample_photos().items():
        data = phone_jpeg(arr, megapixels)
        fast = probs(engine, prepare(data, spec))
        full_image = decode(data)
        assert min(full_image.shape[:2]) >= 2700  # really a phone-size decode
        full = probs(engine, preprocess(full_image, spec))
        top5 = np.argsort(full)[::-1][:5]
        assert int(fast.argmax()) == int(full.argmax()), name
        np.testing.assert_allclose(fast[top5], full[top5], atol=0.02, err_msg=name)


def test_rotated_phone_photo_classifies_like_the_upright_one(engine):
    """EXIF orientation after a scaled decode: a photo stored sideways with tag 6 is the upright photo."""
    arr = sample_photos()["coffee"]  # a confident photo: re-encoding rotated pixels must not decide the test
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = np.ascontiguousarray(np.rot90(arr))  # what the camera stored: tag 6 says "turn 90 clockwise"
    upright = probs(engine, prepare(phone_jpeg(arr, 12), engine.spec))
    tagged = probs(engine, prepare(phone_jpeg(sideways, 12, exif.tobytes()), engine.spec))
    assert int(tagged.argmax()) == int(upright.argmax())
    top5 = np.argsort(upright)[::-1][:5]
    np.testing.assert_allclose(tagged[top5], upright[top5], atol=0.02)
