"""The web page end to end in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
choose, drop and paste real photos, read each one's top label, switch models, see errors inline.
Screenshots the page; with IMGCLF_UPDATE_SCREENSHOT=1 the shot replaces docs/web-ui.png, else it
stays in the test's temporary folder (a test run must not dirty the checkout)."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from serve_support import CAT, live_server

from imgclf.engine import OnnxEngine
from imgclf.package import load_package
from imgclf.pipeline import prepare

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "web-ui.png"
PHOTOS = ["chelsea", "coffee", "rocket", "china", "flower"]


@pytest.fixture(scope="module")
def server(lite0_package, serve_model_dir):
    home = lite0_package.parent.parent
    with live_server("--model", "efficientnet_lite0", "--model", str(serve_model_dir / "tiny"),
                     env={"IMGCLF_HOME": str(home)}) as s:
        yield s


@pytest.fixture(scope="module")
def expected(lite0_package, sample_jpegs) -> dict[str, tuple[int, str]]:
    """Top class of each photo computed in-process: (index, label)."""
    engine = OnnxEngine(load_package(lite0_package))
    out = {}
    for name in PHOTOS:
        logits = engine.logits(prepare(sample_jpegs[name].read_bytes(), engine.spec)[None])[0]
        idx = int(np.argmax(logits))
        out[name] = (idx, engine.labels[idx])
    return out


@pytest.fixture()
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/")
    page.wait_for_selector("#model:not([disabled])")
    yield page
    page.close()


def wait_done(page) -> None:
    page.wait_for_function("document.querySelectorAll('.card').length > 0 && "
                           "document.querySelectorAll('.card[data-status=pending]').length === 0", timeout=60_000)


def card(page, file_name: str):
    return page.locator(".card", has=page.locator(".file-name", has_text=file_name))


def top_label(page, file_name: str) -> str:
    return card(page, file_name).locator(".pred-label").first.inner_text()


def test_chosen_photos_show_their_top_5(page, sample_jpegs, expected, tmp_path):
    assert page.locator("#model").input_value() == "efficientnet_lite0"
    assert "1000 classes" in page.inner_text("#model-info")
    page.set_input_files("#files", [str(sample_jpegs[n]) for n in PHOTOS])
    wait_done(page)
    assert expected["chelsea"][0] in CAT  # the photo is a cat, and the page must say which cat class
    for name in PHOTOS:
        c = card(page, f"{name}.jpg")
        assert c.get_attribute("data-status") == "done"
        assert c.locator(".pred").count() == 5
        assert top_label(page, f"{name}.jpg") == expected[name][1]
        assert "ms" in c.locator(".latency").inner_text()
    assert page.inner_text("#status") == "ready"
    shot = SCREENSHOT if os.environ.get("IMGCLF_UPDATE_SCREENSHOT") == "1" else tmp_path / "web-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a real rendering, not a blank page


def test_switching_models_reclassifies(page, sample_jpegs, expected):
    page.set_input_files("#files", [str(sample_jpegs["chelsea"])])
    wait_done(page)
    assert top_label(page, "chelsea.jpg") == expected["chelsea"][1]
    page.select_option("#model", "tiny")
    wait_done(page)
    assert top_label(page, "chelsea.jpg") in {"a", "b", "c"}
    assert card(page, "chelsea.jpg").locator(".pred").count() == 3  # the tiny model has 3 classes


def _js_file(path: Path, name: str, mime: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode()
    return (f"(() => {{ const bin = atob('{b64}'); const buf = new Uint8Array(bin.length);"
            f" for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);"
            f" const dt = new DataTransfer(); dt.items.add(new File([buf], '{name}', {{type: '{mime}'}}));"
            f" return dt; }})()")


def test_drop_and_paste(page, sample_jpegs, expected):
    page.evaluate(f"document.querySelector('#drop').dispatchEvent(new DragEvent('drop', "
                  f"{{dataTransfer: {_js_file(sample_jpegs['coffee'], 'dropped.jpg', 'image/jpeg')}, "
                  f"bubbles: true, cancelable: true}}))")
    page.evaluate(f"document.dispatchEvent(new ClipboardEvent('paste', "
                  f"{{clipboardData: {_js_file(sample_jpegs['chelsea'], 'pasted.jpg', 'image/jpeg')}, "
                  f"bubbles: true, cancelable: true}}))")
    wait_done(page)
    assert top_label(page, "dropped.jpg") == expected["coffee"][1]
    assert top_label(page, "pasted.jpg") == expected["chelsea"][1]


def test_errors_show_inline(page, tmp_path, sample_jpegs):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    broken = tmp_path / "broken.jpg"
    data = sample_jpegs["rocket"].read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    good = tmp_path / "good.jpg"
    shutil.copy(sample_jpegs["flower"], good)
    page.set_input_files("#files", [str(notes), str(broken), str(good)])
    wait_done(page)
    assert card(page, "notes.txt").get_attribute("data-status") == "error"
    assert "not an image format" in card(page, "notes.txt").locator(".error").inner_text()
    assert "HTTP 415" in card(page, "notes.txt").locator(".error").inner_text()
    assert "truncated" in card(page, "broken.jpg").locator(".error").inner_text()
    assert card(page, "good.jpg").get_attribute("data-status") == "done"
    page.click("#clear")
    assert page.locator(".card").count() == 0
