"""The console (/ui) in a real headless Chromium against the real `homefeed serve` on 127.0.0.1 (issue 17).

Needs Chromium and chromedriver from the distribution (`apt-get install chromium chromium-driver`) and
Selenium; the browser checks skip, saying so, where either is missing. Screenshots of every view
are saved under the test's temporary folder (printed with -s).
"""
import importlib.util
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import free_port

from homefeed.serve import plots
from homefeed.serve.images import PLACEHOLDER, ImageBank
from homefeed.serve.process import start_server
from homefeed.serve.state import open_store

TOKEN = "console-token"
ROOT = Path(__file__).resolve().parents[1]


def _screenshots_module():
    """docs/console_screenshots.py: the README's screenshot script, whose browser setup the tests share."""
    spec = importlib.util.spec_from_file_location("console_screenshots", ROOT / "docs" / "console_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots = _screenshots_module()


@pytest.fixture(scope="module")
def console(tiny_bundle, tmp_path_factory):
    """The real server with an admin token set, and its SQLite state file."""
    state = tmp_path_factory.mktemp("console") / "state.db"
    proc, url = start_server(tiny_bundle, port=free_port(), state=f"sqlite:{state}",
                             settings=(f'serve.admin_token="{TOKEN}"',), quiet=True)
    if httpx.get(url + "/ui", timeout=30).status_code == 404:
        proc.terminate()
        pytest.fail("the server has no /ui: api.create_app must include homefeed.serve.ui.ui_router(service)")
    yield url, state
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def driver():
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed (pip install selenium): the browser checks need it")
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    d = shots.browser(1280, 900)
    yield d
    d.quit()


def _css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _open_known_user(driver, url) -> str:
    """A known user's page, once its buttons work: the cards are parsed before the deferred console.js has run
    (it is fetched after them, behind the card images on a busy server), and a click before then does nothing."""
    driver.get(url + "/ui")
    _css(driver, "#pick-known")[0].click()
    shots.wait_for(driver, ".card")
    shots.wait_ready(driver)
    return _css(driver, "#page")[0].get_attribute("data-user")


def _after_action(driver, timeout_s: float = 60) -> None:
    """Wait for the page reloaded after a button's event was acknowledged: its `.summary .done` note, and the whole
    document parsed (its deferred console.js has run: the note comes before the cards, and a query in between finds
    a page without cards). Fails at once with the console's message when the action was refused instead. The post
    and the rebuilt page may each take seconds on a loaded machine, hence the longer wait."""
    from selenium.common.exceptions import JavascriptException
    from selenium.webdriver.support.ui import WebDriverWait

    # a query that lands while the old document is being replaced is asked again
    outcome = WebDriverWait(driver, timeout_s, ignored_exceptions=(JavascriptException,)).until(lambda d: d.execute_script("""
        var flash = document.querySelector("#flash:not([hidden])");
        if (flash) return "refused: " + flash.textContent;
        var ready = document.documentElement.dataset.consoleReady;
        return document.querySelector(".summary .done") && ready ? "done" : null;"""))
    assert outcome == "done", f"the action was not acknowledged: {outcome}"


def _stored(state: Path, user: str) -> list:
    return [e for e in open_store(f"sqlite:{state}").recent_events(user) if e.event_id.startswith("ui-")]


def test_homepage_view_shows_cards_with_images_also_on_a_phone(console, driver, tmp_path):
    url, _ = console
    user = _open_known_user(driver, url)
    assert f"user_id={user}" in driver.current_url  # a link anyone can share
    cards = _css(driver, ".slot .card")
    assert len(cards) >= 10
    assert shots.images_loaded(driver) >= len(cards)  # every card's picture decoded (natural width > 0)
    assert all(c.find_element("css selector", ".badge").text for c in cards)  # the recall channel of each
    assert _css(driver, ".timings .stage") and _css(driver, "#template")
    driver.save_screenshot(str(tmp_path / "home.png"))
    driver.set_window_size(390, 844)  # a phone: nothing wider than the screen
    try:
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        driver.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        driver.set_window_size(1280, 900)
    print("screenshots:", tmp_path)


def test_buttons_are_refused_without_the_admin_token(console, driver, tmp_path):
    url, state = console
    user = _open_known_user(driver, url)
    driver.execute_script("localStorage.removeItem('homefeed_admin_token')")
    _css(driver, "#token")[0].clear()
    _css(driver, ".slot .card button[data-action=buy]")[0].click()
    flash = shots.wait_for(driver, "#flash:not([hidden])")[0]
    assert "refused (401)" in flash.text
    driver.save_screenshot(str(tmp_path / "refused.png"))
    assert _stored(state, user) == []


def test_buy_blocks_the_standard_category_and_stores_the_event(console, driver, tmp_path):
    url, state = console
    user = _open_known_user(driver, url)
    _css(driver, "#token")[0].clear()  # the field starts with what an earlier page stored; typing appends to it
    _css(driver, "#token")[0].send_keys(TOKEN)
    card = next(c for c in _css(driver, ".slot .card") if int(c.get_attribute("data-standard")) >= 0)
    item, standard = card.get_attribute("data-item"), card.get_attribute("data-standard")
    card.find_element("css selector", "button[data-action=buy]").click()
    _after_action(driver)  # the page reloaded after the event was acknowledged
    assert _css(driver, ".summary .done")
    standards = [c.get_attribute("data-standard") for c in _css(driver, ".slot .card")]
    assert len(standards) >= 10 and standard not in standards
    history = _css(driver, "#history li")[0].text
    assert history.startswith("buy")
    driver.save_screenshot(str(tmp_path / "after_buy.png"))
    assert [(e.item_id, e.behavior) for e in _stored(state, user)] == [(item, "buy")]


def test_item_view_shows_similar_items(console, driver, tmp_path):
    url, _ = console
    _open_known_user(driver, url)
    title = _css(driver, ".slot .card .title")[0]
    item = title.find_element("xpath", "ancestor::article").get_attribute("data-item")
    title.click()
    shots.wait_for(driver, "#similar")
    assert driver.current_url.endswith(f"/ui/items/{item}")
    similar = _css(driver, "#similar .card")
    assert len(similar) >= 3 and item not in [c.get_attribute("data-item") for c in similar]
    assert shots.images_loaded(driver) >= len(similar) + 1
    assert _css(driver, "#recalled .badge")
    driver.save_screenshot(str(tmp_path / "item.png"))


def test_bundle_view_renders_its_plots(console, driver, tmp_path):
    url, _ = console
    driver.get(url + "/ui/bundle")
    charts = shots.wait_for(driver, "svg.chart")
    names = {c.get_attribute("data-chart"): c for c in charts}
    assert {"hitrate", "auc", "calibration", "latency"} <= set(names)
    for chart in charts:
        assert chart.size["width"] > 200 and chart.size["height"] > 100  # laid out, not collapsed
    manifest = json.loads(httpx.get(url + "/readyz").text)
    assert manifest["bundle"] in driver.page_source
    channels = manifest["channels"]
    assert len(names["hitrate"].find_elements("css selector", "polyline")) == len(channels) + 1  # + the merge
    assert len(names["auc"].find_elements("css selector", "rect.bar")) >= 2
    assert _css(driver, "#live table")
    driver.save_screenshot(str(tmp_path / "bundle.png"))


def test_image_endpoint_caches_and_refuses_unknown_items(console):
    url, _ = console
    first = httpx.get(url + "/ui/images/1.png")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert "max-age" in first.headers["cache-control"]
    again = httpx.get(url + "/ui/images/1.png", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(url + "/ui/images/no-such-item.png").status_code == 404


def test_image_bank_reads_npy_rows_files_and_falls_back_to_the_placeholder(tmp_path):
    rng = np.random.default_rng(0)
    bank = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", bank)
    Image.fromarray(bank[2]).save(tmp_path / "two.png")
    images = ImageBank([None, "npy:1", "two.png", "npy:7", "gone.png", "", "https://cdn.example/x.jpg"], tmp_path)

    def pixels(code):
        kind, body = images.image(code)
        assert kind == "png"
        return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))

    assert np.array_equal(pixels(1), bank[1])
    assert np.array_equal(pixels(2), bank[2])
    assert [images.image(c)[1] == PLACEHOLDER for c in (0, 3, 4, 5)] == [True] * 4
    assert images.missing == 2  # npy:7 (no such row) and gone.png
    assert images.image(6) == ("url", "https://cdn.example/x.jpg")


def test_charts_draw_one_line_per_channel_and_the_calibration_bins():
    recall = {"channels": {"a": {"hitrate@20": 0.2, "hitrate@50": 0.4}, "b": {"hitrate@20": 0.1, "hitrate@50": 0.3}},
              "merged": {"hitrate@20": 0.3, "hitrate@50": 0.5}}
    assert plots.hitrate_curves(recall).count("<polyline") == 3
    rank = {"calibration_bins": {"predicted": [0.05, 0.15, None], "observed": [0.04, 0.2, None]}}
    assert plots.calibration_curve(rank).count("<circle") == 2  # empty bins are left out
    assert "no values recorded" in plots.calibration_curve({})


def test_buttons_work_without_a_token_when_none_is_configured(tiny_bundle, tmp_path):
    """The default config (the demo's) has no admin token: the console's buttons then need none."""
    from fastapi.testclient import TestClient

    from homefeed.serve.api import create_app

    app = create_app(tiny_bundle, state=f"sqlite:{tmp_path / 'state.db'}")
    with TestClient(app) as client:
        item = str(client.get("/ui/pick?kind=known").text.split('data-item="')[1].split('"')[0])
        def act(item_id, action):
            return client.post("/ui/events", json={"user_id": "someone", "item_id": item_id, "action": action})

        r = act(item, "view")
        assert r.status_code == 200 and r.json()["behavior"] == "click"
        assert act(item, "steal").status_code == 422
        assert act("no-such-item", "buy").status_code == 404
    app.state.service.close()
