"""EfficientNet-Lite, MobileNetV2, SqueezeNet 1.1 and ResNet-50: architectures in the exact layout of
their official weights (parameter counts, strict loading of the shipped files, TF "SAME" padding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgclf import zoo
from imgclf.zoo import efficientnet_lite
from imgclf.zoo.loading import count_params
from imgclf.zoo.weights import WeightsError, packaged_path, read_state_dict, sha256_file

# Published parameter counts (torchvision's Weights metadata; the EfficientNet-Lite checkpoints).
PARAMS = {
    "efficientnet_lite0": 4_652_008,
    "efficientnet_lite1": 5_416_680,
    "efficientnet_lite2": 6_092_072,
    "mobilenet_v2": 3_504_872,
    "squeezenet1_1": 1_235_496,
    "resnet50": 25_557_032,
}
SHIPPED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]
INPUT_SIZE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
              "mobilenet_v2": 224, "squeezenet1_1": 224, "resnet50": 224}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_the_official_model(name):
    model = zoo.build(name, pretrained=False)
    assert count_params(model) == PARAMS[name]
    assert zoo.get(name).num_params == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_random_init_forward_gives_one_logit_row_per_image(name):
    size = INPUT_SIZE[name]
    model = zoo.build(name, pretrained=False)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_builder_takes_num_classes_and_entry_names_the_classifier(name):
    """Fine-tuning swaps the classifier: the entry says which module it is."""
    entry = zoo.get(name)
    model = entry.builder(num_classes=7)
    head = model.get_submodule(entry.extra["classifier"])
    assert isinstance(head, nn.Linear | nn.Conv2d)
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == 7
    size = INPUT_SIZE[name]
    with torch.inference_mode():
        assert model.eval()(torch.zeros(1, 3, size, size)).shape == (1, 7)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_are_the_official_files_and_load_strictly(name):
    entry = zoo.get(name)
    path = packaged_path(entry.weights)
    assert path is not None, f"{entry.weights.package} is not installed"
    assert sha256_file(path) == entry.weights.sha256
    state = read_state_dict(path)
    model = entry.builder()
    result = model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_shipped_weights_do_not_fit_another_architecture():
    lite0 = packaged_path(zoo.get("efficientnet_lite0").weights)
    with pytest.raises(WeightsError, match="does not fit mobilenet_v2"):
        zoo.build("mobilenet_v2", weights=str(lite0))
    # Same layout, different widths: shape mismatches are reported, never skipped.
    with pytest.raises(WeightsError, match="does not fit efficientnet_lite2"):
        zoo.build("efficientnet_lite2", weights=str(lite0))


def test_weight_sources_and_preprocessing_match_how_the_weights_were_made():
    for name in ("mobilenet_v2", "squeezenet1_1", "resnet50"):
        e = zoo.get(name)
        spec = e.preprocess
        assert (spec.input_size, spec.resize_size, spec.interpolation) == (224, 256, "bilinear")
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        assert e.weights.url == f"https://download.pytorch.org/models/{e.weights.filename}"
    assert zoo.get("squeezenet1_1").weights.hash_prefix == "b8a52dc0"
    assert zoo.get("resnet50").weights.hash_prefix == "0676ba61"
    # EfficientNet-Lite: TensorFlow's eval transform (bicubic, size + 32 then crop, (x - 127) / 128).
    for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
        spec = zoo.get(name).preprocess
        assert (spec.input_size, spec.resize_size, spec.interpolation) == (size, size + 32, "bicubic")
        assert spec.mean == (127.0,) * 3 and spec.std == (128.0,) * 3 and spec.scale == 1.0


@pytest.mark.parametrize(("size", "kernel", "stride", "total"), [
    (224, 3, 2, 1), (224, 5, 2, 3), (15, 5, 2, 4), (15, 3, 2, 2), (28, 3, 1, 2), (7, 1, 1, 0),
])
def test_same_pad_is_tensorflows(size, kernel, stride, total):
    assert efficientnet_lite.same_pad(size, kernel, stride) == total
    # "SAME" gives ceil(size / stride) outputs.
    assert (size + total - kernel) // stride + 1 == -(-size // stride)


def test_strided_same_conv_puts_the_extra_pixel_bottom_right():
    torch.manual_seed(0)
    conv = efficientnet_lite.conv(4, 4, 3, stride=2, groups=4)
    assert isinstance(conv, efficientnet_lite.Conv2dSame)
    x = torch.randn(1, 4, 16, 16)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, None, 2, 0, 1, 4)
    torch.testing.assert_close(conv(x), expected)
    symmetric = F.conv2d(x, conv.weight, None, 2, 1, 1, 4)
    assert not torch.allclose(conv(x), symmetric)
    # Odd sizes (EfficientNet-Lite1 and 2 meet 15, 33, 65...) pad symmetrically.
    x = torch.randn(1, 4, 15, 15)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, None, 2, 1, 1, 4))


def test_lite_keeps_stem_head_and_outer_stages_fixed_under_scaling():
    lite2 = zoo.build("efficientnet_lite2", pretrained=False)
    assert lite2._conv_stem.out_channels == 32 and lite2._conv_head.out_channels == 1280
    assert len(lite2._blocks) == 21  # 1 + 3 + 3 + 4 + 4 + 5 + 1
    assert lite2._blocks[-1]._project_conv.out_channels == 352
    assert not any(isinstance(m, nn.SiLU | nn.Sigmoid) for m in lite2.modules())
