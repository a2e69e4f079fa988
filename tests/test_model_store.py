"""The versioned model store: versions, the default, rollback, pins, atomic writes and plain packages."""

from __future__ import annotations

import json
import shutil

import pytest

from imgclf.model_store import ModelStore, StoreError, model_stores, resolve_package
from imgclf.package import load_package


@pytest.fixture()
def store(serve_model_dir, tmp_path):
    """'tiny' with versions 1, 2 and 3 (the same package copied) and an int8/ folder that is no version."""
    root = tmp_path / "models" / "tiny"
    for v in ("1", "2", "3"):
        shutil.copytree(serve_model_dir / "tiny", root / v)
    shutil.copytree(serve_model_dir / "tiny", root / "1" / "int8")
    (root / "010").mkdir()  # not a version name (leading zero), and no package anyway
    (root / "4").mkdir()  # a version still being written: no model.json yet
    return ModelStore(root)


def test_versions_are_integer_folders_holding_a_package(store):
    assert list(store.versions()) == ["1", "2", "3"]
    assert store.next_version() == 4
    assert not store.is_plain()
    # Without versions.json the newest version is the default, kept with the one before for rollback.
    assert store.default_version() == "3"
    assert store.wanted() == ("3", ["3"])


def test_set_default_and_rollback(store):
    store.set_default("2")
    assert store.default_version() == "2"
    state = store.set_default("3")
    assert state.default == "3" and state.previous == "2"
    assert store.wanted() == ("3", ["3", "2"])
    assert store.rollback().default == "2"
    assert store.wanted()[0] == "2"
    # The version rolled back from is forgotten; an earlier one is there no more.
    with pytest.raises(StoreError, match="no earlier default"):
        store.rollback()
    with pytest.raises(StoreError, match="no version '9'"):
        store.set_default("9")


def test_rollback_skips_deleted_versions(store):
    for v in ("1", "2", "3"):
        store.set_default(v)
    shutil.rmtree(store.root / "2")
    assert store.rollback().default == "1"


def test_pins_and_served_flag(store):
    store.set_default("3")
    store.pin("1")
    assert store.wanted() == ("3", ["3", "1"])
    state = store.read_state()
    assert state.pinned == ("1",) and state.served is True
    store.unpin("1")
    assert store.wanted() == ("3", ["3"])
    store.set_served(False)
    assert store.read_state().served is False


def test_state_file_is_written_atomically_and_keeps_unknown_keys(store):
    store.set_default("2")
    raw = json.loads(store.state_file.read_text())
    raw["future_key"] = {"kept": True}
    store.state_file.write_text(json.dumps(raw))
    store.set_default("3")
    raw = json.loads(store.state_file.read_text())
    assert raw["future_key"] == {"kept": True} and raw["default"] == "3" and raw["history"] == ["2", "3"]
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_default_that_is_gone_falls_back_to_the_newest(store):
    store.set_default("1")
    shutil.rmtree(store.root / "1")
    assert store.default_version() == "3"


def test_bad_state_file_is_a_clear_error(store):
    store.state_file.write_text("{ nope")
    with pytest.raises(StoreError, match="cannot read"):
        store.read_state()
    store.state_file.write_text(json.dumps({"default": "1", "pinned": "2"}))
    with pytest.raises(StoreError, match="'pinned' must be a list"):
        store.read_state()


def test_plain_package_is_a_store_of_one_version(serve_model_dir, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(serve_model_dir / "tiny", root)
    store = ModelStore(root)
    assert store.is_plain() and list(store.versions()) == ["1"]
    assert resolve_package(root) == root
    (root / "report.md").write_text("kept")
    store.make_versioned()
    assert not store.is_plain()
    assert list(store.versions()) == ["1"] and (root / "1" / "report.md").read_text() == "kept"
    assert store.read_state().default == "1"
    assert load_package(resolve_package(root)).name == "tiny"


def test_pin_current_default_keeps_what_is_served_when_a_version_is_added(store):
    shutil.rmtree(store.root / "3")
    store.pin_current_default()
    shutil.copytree(store.root / "2", store.root / "3")
    assert store.default_version() == "2"


def test_model_stores_lists_packages_and_stores(store, serve_model_dir):
    shutil.copytree(serve_model_dir / "tiny2", store.root.parent / "tiny2")
    (store.root.parent / "empty").mkdir()
    assert [s.name for s in model_stores(store.root.parent)] == ["tiny", "tiny2"]
    assert resolve_package(store.root) == store.root / "3"
    assert resolve_package(store.root, "1") == store.root / "1"
