"""A whole Keras model passed as ``--weights`` (the fine-tuned cats/dogs VGG16 everyone has) is
recognised as such and pointed at ``imgclf import``, not mistaken for a 'notop' weights file."""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("keras") is None:
    pytest.skip("the Keras extra (pip install imgclf[keras]) is not installed", allow_module_level=True)
os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported

import keras  # noqa: E402

from imgclf import cli  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def catdog_functional() -> keras.Model:
    """VGG16 base + Flatten + Dense(2, softmax), the Keras tutorial way (functional)."""
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    x = keras.layers.Flatten()(base.output)
    return keras.Model(base.input, keras.layers.Dense(2, activation="softmax")(x), name="catdog")


def catdog_sequential() -> keras.Model:
    """The same with the base nested in a Sequential model."""
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    return keras.Sequential([keras.Input((224, 224, 3)), base, keras.layers.Flatten(),
                             keras.layers.Dense(2, activation="softmax")], name="catdog_seq")


@pytest.fixture(scope="module")
def photo(sample_jpegs):
    return sample_jpegs["chelsea"]


@pytest.mark.parametrize("make", [catdog_functional, catdog_sequential])
def test_whole_model_h5_as_weights_points_to_import(make, photo, tmp_path, capsys):
    path = tmp_path / "catdog.h5"
    make().save(path)
    rc = cli.main(["predict", str(photo), "--model", "vgg16", "--weights", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and "notop" not in err
    assert "catdog.h5 is a whole Keras model" in err and "with its own head" in err
    assert err.endswith("imgclf import catdog.h5 --labels labels.txt --out DIR")


def test_keras3_model_file_as_weights_points_to_import(photo, tmp_path, capsys):
    path = tmp_path / "catdog.keras"
    catdog_functional().save(path)
    rc = cli.main(["predict", str(photo), "--model", "vgg16", "--weights", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "catdog.keras is a whole Keras 3 model" in err
    assert err.endswith("imgclf import catdog.keras --labels labels.txt --out DIR")


def test_whole_model_with_the_imagenet_head_still_loads(tmp_path):
    """``model.save()`` of an unmodified application is a fine source of its weights."""
    import numpy as np
    import torch

    from imgclf import zoo

    model = keras.applications.MobileNetV2(weights=None)
    path = tmp_path / "mobilenet_v2_whole.h5"
    model.save(path)
    net = zoo.build("mobilenet_v2", weights=str(path))
    kernel = model.get_layer("predictions").kernel.numpy()
    torch.testing.assert_close(net.classifier[1].weight, torch.from_numpy(np.ascontiguousarray(kernel.T)))
