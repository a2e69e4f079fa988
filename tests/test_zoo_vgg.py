"""VGG zoo entries: torchvision's state-dict layout, parameter counts, preprocessing and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imgclf import zoo
from imgclf.preprocess import PreprocessSpec, caffe_spec, preprocess
from imgclf.publish import publish
from imgclf.samples import reference_photo
from imgclf.zoo.labels import imagenet_labels
from imgclf.zoo.loading import count_params
from imgclf.zoo.vgg import VGG

# Written out from torchvision's layer configs: index of every Conv2d inside ``features`` and its
# output width. Without BN each conv is followed by ReLU (+ pool at block ends); with BN by BN, ReLU.
OFFICIAL_CONVS = {
    "vgg16": ([0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
              [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]),
    "vgg19": ([0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
              [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]),
    "vgg16_bn": ([0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40],
                 [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]),
    "vgg19_bn": ([0, 3, 7, 10, 14, 17, 20, 23, 27, 30, 33, 36, 40, 43, 46, 49],
                 [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]),
}
OFFICIAL_PARAMS = {"vgg16": 138_357_544, "vgg19": 143_667_240, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248}
OFFICIAL_FILES = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
}


def official_signature(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's published state dict for ``name``."""
    idx, widths = OFFICIAL_CONVS[name]
    sig: dict[str, tuple[int, ...]] = {}
    cin = 3
    for i, w in zip(idx, widths, strict=True):
        sig[f"features.{i}.weight"] = (w, cin, 3, 3)
        sig[f"features.{i}.bias"] = (w,)
        if name.endswith("_bn"):
            for p in ("weight", "bias", "running_mean", "running_var"):
                sig[f"features.{i + 1}.{p}"] = (w,)
        cin = w
    sig.update({
        "classifier.0.weight": (4096, 512 * 7 * 7), "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
        "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
    })
    return sig


@pytest.fixture(scope="module", params=list(OFFICIAL_CONVS))
def built(request):
    """Each VGG once per module (1-2 s and ~550 MB each, freed before the next)."""
    torch.manual_seed(0)
    model = zoo.build(request.param, pretrained=False)
    yield request.param, model
    del model


def _weights_only(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_state_dict_matches_official_layout(built):
    name, model = built
    got = {k: tuple(v.shape) for k, v in _weights_only(model.state_dict()).items()}
    want = official_signature(name)
    assert list(got) == list(want)  # same keys in the same order
    assert got == want


def test_parameter_count_is_official(built):
    name, model = built
    assert count_params(model) == OFFICIAL_PARAMS[name] == zoo.get(name).num_params
    assert sum(int(np.prod(s)) for k, s in official_signature(name).items()
               if "running" not in k) == OFFICIAL_PARAMS[name]


def test_official_state_dict_loads_strictly_and_changes_the_output(built):
    """A state dict with exactly the official keys and shapes (as the 2017 files have them, without
    ``num_batches_tracked``) loads strictly, and really lands in the model."""
    name, model = built
    gen = torch.Generator().manual_seed(1)
    # 64 px is enough here (the adaptive pool still feeds 7x7 to the classifier) and 12x cheaper.
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        before = model(x)
        state = {k: torch.empty(s).uniform_(-0.01, 0.01, generator=gen) for k, s in official_signature(name).items()}
        for k in state:
            if k.endswith("running_var"):
                state[k] = state[k].abs() + 1.0
        result = model.load_state_dict(state, strict=False)
        after = model(x)
    assert result.unexpected_keys == []
    assert [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] == []
    assert torch.equal(model.classifier[6].bias, state["classifier.6.bias"])
    assert after.shape == (1, 1000)
    assert not torch.allclose(before, after)


def test_forward_gives_imagenet_logits(built):
    name, model = built
    assert not model.training
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(OFFICIAL_CONVS))
def test_entry_metadata(name):
    entry = zoo.get(name)
    assert entry.family == "vgg"
    assert entry.weights.url == OFFICIAL_FILES[name]
    assert entry.weights.filename == OFFICIAL_FILES[name].rsplit("/", 1)[1]
    assert entry.weights.hash_prefix == entry.weights.filename.split("-")[1].split(".")[0]
    # torchvision's evaluation transform: resize 256, centre crop 224, bilinear, ImageNet mean/std.
    spec = entry.preprocess
    assert (spec.input_size, spec.resize_size, spec.interpolation) == (224, 256, "bilinear")
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.channel_order == "RGB" and spec.resize_mode == "shorter"


@pytest.mark.parametrize("name", ["vgg16_keras", "vgg19_keras"])
def test_keras_entries_use_keras_weights_and_caffe_preprocessing(name):
    entry = zoo.get(name)
    depth = name[3:5]
    assert entry.preprocess == caffe_spec(224)
    assert entry.weights.url == (f"https://storage.googleapis.com/tensorflow/keras-applications/vgg{depth}/"
                                 f"vgg{depth}_weights_tf_dim_ordering_tf_kernels.h5")
    assert entry.num_params == OFFICIAL_PARAMS[f"vgg{depth}"]


def test_offline_without_weights_names_the_url(tmp_path, monkeypatch):
    from imgclf.zoo.weights import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="vgg16-397923af.pth"):
        zoo.build("vgg16", allow_download=False)


SMALL_CFG = (8, "M", 8, "M", 16, "M", 16, "M", 16, "M")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_small_config_exports_to_onnx_matching_torch(tmp_path, batch_norm):
    """Every op VGG uses (conv, BN, ReLU, max-pool, adaptive avg-pool, flatten, linear) exports and
    ONNX Runtime agrees with torch; a narrow config keeps the file small."""
    torch.manual_seed(0)
    model = VGG(SMALL_CFG, batch_norm=batch_norm, hidden=64).eval()
    spec = zoo.get("vgg16_bn" if batch_norm else "vgg16").preprocess
    report = publish(model, tmp_path / "pkg", name="vgg-small", labels=list(imagenet_labels()), spec=spec)
    assert report.check.max_abs_diff < 1e-3
    meta = json.loads((tmp_path / "pkg" / "model.json").read_text())
    assert PreprocessSpec.from_dict(meta["preprocess"]) == spec

    import onnxruntime as ort

    x = preprocess(reference_photo(), spec)[None]
    sess = ort.InferenceSession(str(tmp_path / "pkg" / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_full_vgg16_exports(tmp_path):
    torch.manual_seed(0)
    model = zoo.build("vgg16", pretrained=False)
    report = publish(model, tmp_path / "vgg16", name="vgg16", labels=list(imagenet_labels()),
                            spec=zoo.get("vgg16").preprocess)
    assert report.check.top1_onnx == report.check.top1_torch
    assert (tmp_path / "vgg16" / "model.onnx").stat().st_size > 500e6
