"""Screenshots of the console (`/ui`) in headless Chromium: the README's docs/console.png and one per view.

    python docs/console_screenshots.py --bundle BUNDLE              # starts `homefeed serve BUNDLE` itself
    python docs/console_screenshots.py --url http://127.0.0.1:8000  # or shoots a server already running

Needs Chromium and its driver from the distribution (`apt-get install chromium chromium-driver`) and
Selenium (`pip install selenium`). Writes home.png, item.png, bundle.png and phone.png to --out, and
with --readme a small docs/console.png of the homepage view.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars")


def browser(width: int = 1280, height: int = 900):
    """A headless Chromium driven by Selenium, with a fresh profile; raises RuntimeError when one is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        raise RuntimeError("Chromium and chromedriver are needed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='homefeed_chromium_')}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(driver_path), options=options)


def wait_for(driver, css: str, timeout_s: float = 30):
    """The elements matching `css` once at least one is present."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def wait_ready(driver, timeout_s: float = 30) -> None:
    """Wait until the page's console.js has run (it marks <html data-console-ready>): before that the card
    buttons have no handler and the token field is about to be reset from localStorage. The script is
    deferred and fetched after the cards are parsed, so on a busy server the cards come first."""
    wait_for(driver, "html[data-console-ready]", timeout_s)


def images_loaded(driver) -> int:
    """How many images on the page have decoded (natural width > 0), after waiting for them to finish."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    return driver.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")


def shoot(url: str, out: Path, *, readme: bool = False) -> dict[str, Path]:
    """Open each view of the console at `url`, save a screenshot of each under `out`; returns {view: path}."""
    out.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    driver = browser()
    try:
        driver.get(f"{url}/ui/pick?kind=known")
        cards = wait_for(driver, ".card")
        wait_ready(driver)
        images_loaded(driver)
        shots["home"] = out / "home.png"
        driver.save_screenshot(str(shots["home"]))
        item = cards[0].get_attribute("data-item")
        driver.get(f"{url}/ui/items/{item}")
        wait_for(driver, "#similar")
        images_loaded(driver)
        shots["item"] = out / "item.png"
        driver.save_screenshot(str(shots["item"]))
        driver.get(f"{url}/ui/bundle")
        wait_for(driver, "svg.chart")
        shots["bundle"] = out / "bundle.png"
        driver.save_screenshot(str(shots["bundle"]))
        driver.set_window_size(390, 844)  # a phone
        driver.get(f"{url}/ui/pick?kind=known")
        wait_for(driver, ".card")
        wait_ready(driver)
        images_loaded(driver)
        shots["phone"] = out / "phone.png"
        driver.save_screenshot(str(shots["phone"]))
        if readme:
            driver.set_window_size(1100, 760)
            driver.get(f"{url}/ui/pick?kind=known")
            wait_for(driver, ".card")
            wait_ready(driver)
            images_loaded(driver)
            shots["readme"] = DOCS / "console.png"
            _small_png(driver.get_screenshot_as_png(), shots["readme"])
    finally:
        driver.quit()
    return shots


def _small_png(png: bytes, path: Path, width: int = 880) -> None:
    """The screenshot scaled to `width` pixels and quantised to 128 colours: small enough for the repository."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a bundle folder: start `homefeed serve` on it")
    parser.add_argument("--url", help="a running server instead, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", default="console_screenshots", help="folder for the screenshots")
    parser.add_argument("--readme", action="store_true", help="also write docs/console.png")
    args = parser.parse_args()
    if bool(args.bundle) == bool(args.url):
        parser.error("give exactly one of --bundle and --url")
    proc = None
    url = args.url
    if args.bundle:
        from homefeed.serve.process import start_server

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        state = Path(tempfile.mkdtemp(prefix="homefeed_console_")) / "state.db"
        proc, url = start_server(args.bundle, port=port, state=f"sqlite:{state}", quiet=True)
    try:
        for view, path in shoot(url.rstrip("/"), Path(args.out), readme=args.readme).items():
            print(f"{view:7s} {path}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
