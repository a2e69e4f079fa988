"""The web page's feedback in headless Chromium: "right", "wrong? choose the right label" from the
model's searchable label list, the "received" confirmation, and the review page behind the API key.
With IMGCLF_UPDATE_SCREENSHOT=1 the screenshots replace docs/feedback-page.png and docs/feedback-review.png."""

from __future__ import annotations

import os
from pathlib import Path

import httpx2 as httpx
import pytest
from serve_support import live_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

pytest.importorskip("sqlalchemy", reason="the feedback store needs the feedback extra: pip install 'imgclf[feedback]'")

KEY = "page-review-key"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def screenshot(page, name: str, tmp_path: Path) -> None:
    shot = (DOCS if os.environ.get("IMGCLF_UPDATE_SCREENSHOT") == "1" else tmp_path) / name
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000  # a real rendering, not a blank page


@pytest.fixture(scope="module")
def server(lite0_package, tmp_path_factory):
    home = lite0_package.parent.parent
    store = tmp_path_factory.mktemp("feedback-store")
    with live_server("--model", "efficientnet_lite0", "--feedback", "--feedback-store", str(store), "--api-key", KEY,
                     env={"IMGCLF_HOME": str(home)}) as s:
        yield s


def card(page, name: str):
    return page.locator(".card", has=page.locator(".file-name", has_text=name))


def test_right_and_wrong_then_review(browser, server, sample_jpegs, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/")
    page.wait_for_selector("#model:not([disabled])")
    assert page.locator("#review-link").is_visible()
    assert page.locator("#labels option").count() == 1000  # the model's labels, searchable in the input
    page.set_input_files("#files", [str(sample_jpegs["chelsea"]), str(sample_jpegs["coffee"])])
    page.wait_for_function("document.querySelectorAll('.card[data-status=done]').length === 2", timeout=60_000)

    cat = card(page, "chelsea.jpg")
    said = cat.locator(".pred-label").first.inner_text()
    cat.locator(".fb-label").fill("not a label at all")
    cat.locator(".fb-send").click()
    assert "not one of this model's labels" in cat.locator(".fb-status").inner_text()
    cat.locator(".fb-label").fill("Egyptian cat" if said != "Egyptian cat" else "tiger cat")
    cat.locator(".fb-send").click()
    page.wait_for_selector(".card[data-feedback=sent] >> text=received", timeout=30_000)
    assert "pending review" in cat.locator(".fb-status").inner_text()

    mug = card(page, "coffee.jpg")
    mug.locator(".fb-right").click()
    page.wait_for_function("document.querySelectorAll('.card[data-feedback=sent]').length === 2", timeout=30_000)
    assert "confirmed" in mug.locator(".fb-status").inner_text()
    screenshot(page, "feedback-page.png", tmp_path)

    records = httpx.get(server.url + "/v1/feedback", headers={"X-API-Key": KEY}).json()["records"]
    assert len(records) == 2
    by_label = {r["predicted_label"] == r["label"]: r for r in records}
    assert by_label[False]["predicted_label"] == said and by_label[False]["label"] in ("Egyptian cat", "tiger cat")

    # The review page: nothing without the key, the records with it; accept one.
    page.goto(server.url + "/review")
    page.fill("#key", "wrong")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#note.bad")
    assert "wrong API key" in page.inner_text("#note")
    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_function("document.querySelectorAll('.record').length === 2", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('.record .thumb img')].every(i => i.naturalWidth > 0)",
                           timeout=30_000)
    first = page.locator(".record").first
    first.locator(".accept").click()
    page.wait_for_selector(".record[data-status=accepted]")
    rid = int(first.get_attribute("data-id"))
    screenshot(page, "feedback-review.png", tmp_path)
    assert httpx.get(f"{server.url}/v1/feedback/{rid}", headers={"X-API-Key": KEY}).json()["status"] == "accepted"
    # The key stays in this tab only: a reload still has it, and lists what is pending.
    page.reload()
    page.wait_for_function("document.querySelectorAll('.record').length === 1", timeout=30_000)
    page.close()
