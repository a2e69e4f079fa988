"""The preprocessing spec: geometry, normalisation, channel order, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.preprocess import (
    CAFFE_BGR_MEAN,
    PreprocessSpec,
    caffe_spec,
    preprocess,
    preprocess_batch,
    resize_and_crop,
)


def test_default_is_the_imagenet_eval_transform():
    spec = PreprocessSpec()
    assert spec.input_size == 224 and spec.resize_size == 256


def test_shorter_side_resize_then_centre_crop_keeps_the_centre():
    # 300x600 landscape: shorter side -> 256, so 512x256, centre 224 crop.
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 290:310] = 255  # a white vertical stripe in the middle
    out = resize_and_crop(img, PreprocessSpec(interpolation="nearest"))
    assert out.shape == (224, 224, 3)
    white_cols = np.where(out[112, :, 0] > 128)[0]
    assert abs(white_cols.mean() - 111.5) < 2  # still centred
    assert 16 <= len(white_cols) <= 19  # 20 px * 256/300 = 17


def test_squash_resizes_whole_image():
    img = np.zeros((100, 50, 3), np.uint8)
    img[:50] = 255  # top half white
    out = resize_and_crop(img, PreprocessSpec(input_size=32, resize_mode="squash", interpolation="nearest"))
    assert out.shape == (32, 32, 3)
    assert out[:16].min() == 255 and out[16:].max() == 0


def test_normalisation_values():
    img = np.full((8, 8, 3), [255, 0, 128], np.uint8)
    spec = PreprocessSpec(input_size=8, crop_pct=1.0, resize_mode="squash")
    x = preprocess(img, spec)
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    expect = (np.array([1.0, 0.0, 128 / 255]) - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x[:, 0, 0], expect, rtol=1e-6)


def test_caffe_bgr_mean_subtraction():
    img = np.full((4, 4, 3), [10, 20, 30], np.uint8)  # R, G, B
    x = preprocess(img, caffe_spec(4))
    np.testing.assert_allclose(x[:, 0, 0], np.array([30, 20, 10]) - np.array(CAFFE_BGR_MEAN), rtol=1e-6)


def test_grayscale_spec_gives_one_channel():
    img = np.full((10, 10, 3), 200, np.uint8)
    spec = PreprocessSpec(input_size=10, resize_mode="squash", grayscale=True, mean=(0.5,), std=(0.25,))
    x = preprocess(img, spec)
    assert x.shape == (1, 10, 10)
    np.testing.assert_allclose(x[0, 0, 0], (200 / 255 - 0.5) / 0.25, rtol=1e-5)


def test_batch_equals_single():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (90, 40)]]
    spec = PreprocessSpec(input_size=32)
    batch = preprocess_batch(imgs, spec)
    assert batch.shape == (2, 3, 32, 32)
    for i, im in enumerate(imgs):
        np.testing.assert_array_equal(batch[i], preprocess(im, spec))


def test_dict_round_trip():
    spec = PreprocessSpec(input_size=299, crop_pct=0.8975, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict(caffe_spec().to_dict()) == caffe_spec()


@pytest.mark.parametrize("kw", [
    {"input_size": 0}, {"crop_pct": 0}, {"crop_pct": 1.5}, {"resize_mode": "stretch"},
    {"interpolation": "cubic"}, {"mean": (0.1, 0.2)}, {"std": (0, 1, 1)}, {"channel_order": "RBG"},
])
def test_invalid_specs_are_rejected(kw):
    with pytest.raises(ValueError):
        PreprocessSpec(**kw)


def test_unknown_fields_rejected():
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({"input_size": 10, "colour": "red"})
