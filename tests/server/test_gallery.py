"""The gallery in a real browser: headless Chromium (Debian's package, driven by Playwright) against a real
uvicorn on a free localhost port. Screenshots go to benchmarks/results/gallery-*.png."""

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TESTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = TESTS.parent / "benchmarks" / "results"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")


@contextmanager
def serving(settings):
    """A real uvicorn on a free localhost port, in a thread."""
    import uvicorn

    from mhtag.server.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def server(indexed):
    from mhtag.server.service import Settings

    with serving(Settings(db=indexed[0])) as url:
        yield url


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.on("console", lambda m: print("console:", m.text))
        page.on("pageerror", lambda e: print("pageerror:", e))
        yield page
        browser.close()


def test_gallery_filters_reranks_and_shows_details(server, page, demo):
    page.goto(server + "/")
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 40 and "120 matched" in page.inner_text("#matched")
    page.wait_for_load_state("networkidle")  # the thumbnails, before the screenshot
    page.screenshot(path=str(SHOTS / "gallery-grid.png"))

    page.check("input[data-attribute='colour'][data-value='red']")
    page.wait_for_function("document.querySelector('#matched').textContent.indexOf('120 matched') < 0")
    matched = int(page.inner_text("#matched").split()[0])
    assert 0 < matched < 120 and "colour=red" in page.url
    cards = page.locator(".card .labels")
    assert all("red" in cards.nth(i).inner_text() for i in range(cards.count()))
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(SHOTS / "gallery-filtered.png"))
    with page.expect_download() as download:  # every matched row, not only the cards shown
        page.click("#export")
    exported = Path(download.value.path()).read_text().splitlines()
    assert download.value.suggested_filename == "mhtag-export.csv" and len(exported) == matched + 1
    assert exported[0].startswith('"id","path"') and all(',"red",' in line for line in exported[1:])

    page.set_input_files("#query-file", str(demo.parent / "images" / "00007.png"))
    page.wait_for_selector("#query:not([hidden])")
    page.wait_for_function("document.querySelector('.card img').alt === '00007.png' || "
                           "document.querySelector('.card .labels') !== null")
    first = page.locator(".card img").first.get_attribute("alt")
    colour_of_7 = demo.read_text().splitlines()[8].split(",")[2]
    if colour_of_7 == "red":  # the query image itself passes the filter: it must rank first
        assert first == "00007.png"
    assert "similar to this image" in page.inner_text("#query")

    page.locator(".card img").first.click()
    page.wait_for_selector("#detail:not([hidden]) table.answers")
    detail = page.inner_text("#detail")
    assert "head (top 3)" in detail and "neighbours" in detail and "fused" in detail and "colour" in detail
    page.screenshot(path=str(SHOTS / "gallery-detail.png"))

    page.goto(server + "/?colour=red&shape=circle")  # a bookmarked view restores its filters
    page.wait_for_selector(".card, #matched:has-text('0 matched')")
    assert page.is_checked("input[data-attribute='shape'][data-value='circle']")


@pytest.mark.slow
def test_a_private_gallery_asks_for_the_key_once(indexed, page, tmp_path):
    from mhtag.server.service import Settings

    key = tmp_path / "key"
    key.write_text("s" * 32)
    with serving(Settings(db=indexed[0], api_key_file=key, private=True)) as url:
        page.goto(url + "/")
        page.wait_for_selector("#key-dialog[open]")
        assert page.locator(".card").count() == 0
        page.fill("#key-input", "s" * 32)
        page.click("#key-form button")
        page.wait_for_selector(".card")
        assert page.locator(".card").count() == 40
        page.wait_for_load_state("networkidle")
        loaded = page.evaluate("[...document.querySelectorAll('.card img')].filter(i => i.naturalWidth > 0).length")
        assert loaded > 0  # thumbnails, fetched by the page itself with the key's cookie


def _matched(page) -> int:
    return int(page.inner_text("#matched").split()[0])


def test_labels_fixed_in_the_gallery_reach_the_grid_the_export_and_the_retrained_model(indexed, page, tmp_path):
    import pandas as pd

    from mhtag.catalogue.edits import export_labels
    from mhtag.server.service import Settings

    db, key = indexed[0], "w" * 32
    (tmp_path / "key").write_text(key)
    with serving(Settings(db=db, api_key_file=tmp_path / "key")) as url:
        page.goto(url + "/")
        page.evaluate("k => localStorage.setItem('mhtag_key', k)", key)
        page.goto(url + "/?colour=red&source=label")
        page.wait_for_selector(".card")
        red = _matched(page)
        first = page.locator(".card").first
        rid, rel = first.get_attribute("data-id"), first.locator("img").get_attribute("alt")
        first.locator("img").click()
        page.wait_for_selector("#detail:not([hidden]) table.labels")
        page.select_option("#detail select[data-attribute='colour']", "blue")
        page.click("#save-labels")
        page.wait_for_selector("#save-status:has-text('saved')")
        page.wait_for_function(f"parseInt(document.querySelector('#matched').textContent) === {red - 1}")
        assert page.locator(f".card[data-id='{rid}']").count() == 0  # no longer red: gone from the red grid
        assert "red → blue (gallery)" in page.inner_text("#detail .history")
        page.click("#detail button[data-confirm='shape']")  # "this shape is right"
        page.wait_for_selector("#detail .history:has-text('gallery, kept')")
        page.wait_for_selector("#notice:has-text('2 label change')")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SHOTS / "gallery-edit.png"))
        exported = pd.read_csv(export_labels(db, tmp_path / "labels.csv").path)
        assert exported.set_index("path").loc[f"images/{rel}", "colour"] == "blue"

        page.click("#review-open")  # the review queue, answered from the keyboard
        page.wait_for_selector("#review-body .review-item")
        item = page.evaluate("state.review")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SHOTS / "gallery-review.png"))
        with page.expect_response(lambda r: "/api/review?" in r.url):  # the next item, once the answer is in
            page.keyboard.press("a")
        labels = page.request.get(f"{url}/api/rows/{item['id']}").json()["labels"]
        assert labels[item["attribute"]] == item["suggested"]
        page.keyboard.press("Escape")
        assert page.is_hidden("#review")

        before = page.request.get(url + "/api/health").json()
        confidences = page.request.post(url + "/api/search", data={"limit": 120}).json()["results"]
        page.click("#retrain")
        page.wait_for_selector("#notice:has-text('retrained on')", timeout=120_000)
        after = page.request.get(url + "/api/health").json()
        assert before["changes_since_model"] == 3 and after["changes_since_model"] == 0
        assert after["model"] != before["model"]
        refreshed = page.request.post(url + "/api/search", data={"limit": 120}).json()["results"]
        assert [r["colour_confidence"] for r in refreshed] != [r["colour_confidence"] for r in confidences]
        page.wait_for_selector(".card")


@pytest.mark.slow
def test_the_gallery_fits_a_phone(server, page):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(server + "/")
    page.wait_for_selector(".card")
    assert not page.evaluate("document.getElementById('filters').open")  # filters folded away on a phone
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(SHOTS / "gallery-phone.png"))
    page.click("#filters summary")
    page.check("input[data-attribute='colour'][data-value='red']")
    page.wait_for_function("document.querySelector('#matched').textContent.indexOf('120 matched') < 0")


@pytest.mark.slow
def test_a_sentence_typed_in_the_search_box_ranks_the_grid_and_stays_in_the_url(captioned, page):
    """The box shows where the index's model has a text tower; the grid is the API's text search, in order, and
    the query survives a reload (it is in the URL)."""
    from fastapi.testclient import TestClient

    from mhtag.server.app import create_app
    from mhtag.server.service import Settings

    db = captioned[3]
    expected = TestClient(create_app(Settings(db=db)), base_url="http://localhost").post(
        "/api/search", json={"text": "large red circle", "limit": 5}).json()["results"]
    with serving(Settings(db=db)) as url:
        page.goto(url + "/")
        page.wait_for_selector("#text-query", state="visible")
        page.fill("#text-query", "large red circle")
        page.press("#text-query", "Enter")
        page.wait_for_function("location.search.indexOf('text=') >= 0")
        page.wait_for_function(f"document.querySelector('.card')?.dataset.id === '{expected[0]['id']}'")
        shown = page.eval_on_selector_all(".card", "cs => cs.slice(0, 5).map(c => c.dataset.id)")
        assert shown == [str(r["id"]) for r in expected]
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SHOTS / "gallery-text.png"))
        page.reload()
        page.wait_for_function(f"document.querySelector('.card')?.dataset.id === '{expected[0]['id']}'")
        assert page.input_value("#text-query") == "large red circle"
