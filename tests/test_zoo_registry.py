"""The zoo registry depends on nothing; families register themselves when imgclf.zoo loads them;
an unknown name is a user error with the known names. Also: the trainer's parts import no circle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imgclf import zoo
from imgclf.cli import main
from imgclf.errors import UserError
from imgclf.train.models import UnknownArchitectureError, build_model
from imgclf.zoo import registry


def _modules_after(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_unknown_zoo_name_is_a_user_error_naming_the_known_ones():
    with pytest.raises(UserError) as info:
        zoo.get("resnet5O")
    assert isinstance(info.value, zoo.UnknownModelError)
    assert str(info.value).startswith("unknown model 'resnet5O'; known models: ") and "resnet50" in str(info.value)
    assert not zoo.is_zoo_name("resnet5O") and "resnet50" in zoo.names()


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture 'vgg9'; known: "):
        build_model("vgg9", num_classes=3)
    assert issubclass(UnknownArchitectureError, UserError)


def test_cli_reports_an_unknown_model_in_one_line(tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--model", "no_such_model", str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgclf: error: unknown model 'no_such_model'")


def test_registry_depends_on_nothing_and_families_load_on_first_lookup():
    loaded = _modules_after("import imgclf.zoo.registry, imgclf.zoo")
    assert "torch" not in loaded  # the torch-free server reads DEFAULT_MODEL from here
    assert not any(m.startswith("imgclf.zoo.") and m != "imgclf.zoo.registry" for m in loaded), loaded
    loaded = _modules_after("import imgclf.zoo\nimgclf.zoo.names()")
    assert {"imgclf.zoo.families", "imgclf.zoo.vgg", "imgclf.zoo.efficientnet_lite"} <= set(loaded)


def test_registering_and_unregistering_an_entry():
    entry = registry.get("squeezenet1_1")
    clone = registry.register(registry.ZooEntry(**{**entry.__dict__, "name": "tiny_test_entry"}))
    try:
        assert zoo.get("tiny_test_entry") is clone
        with pytest.raises(ValueError, match="registered twice"):
            registry.register(clone)
    finally:
        registry.unregister("tiny_test_entry")
    assert not zoo.is_zoo_name("tiny_test_entry")


def test_the_trainers_parts_do_not_import_the_trainer():
    parts = ["callbacks", "hooks", "checkpoint", "speed_probe", "runtime", "params", "schedule", "signals",
             "progress", "augment", "data"]
    loaded = _modules_after("\n".join(f"import imgclf.train.{p}" for p in parts))
    assert "imgclf.train.loop" not in loaded and "imgclf.train.callbacks" in loaded


def test_importing_the_api_loads_no_torch():
    loaded = _modules_after("import imgclf, imgclf.training_api\nimgclf.train\nimgclf.finetune")
    assert "torch" not in loaded and "imgclf.train" in loaded and "imgclf.finetune" in loaded
